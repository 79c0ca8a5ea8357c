#!/usr/bin/python3
"""Build step: embeds a text file in a C source file as one NUL-terminated array.

    embed.py INPUT OUTPUT SYMBOL   ->   const char SYMBOL[] = "...";
"""
import sys


def main():
    src, out, symbol = sys.argv[1:4]
    data = open(src, "rb").read()
    lines = [f"/* Generated from {src.rsplit('/', 1)[-1]} by tools/embed.py: do not edit. */",
             f"extern const char {symbol}[];", f"const char {symbol}[] ="]
    for i in range(0, len(data), 64):
        chunk = data[i:i + 64]
        lines.append('\t"' + "".join(f"\\x{b:02x}" for b in chunk) + '"')
    lines[-1] += ";" if len(data) else ""
    if not data:
        lines.append('\t"";')
    open(out, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
