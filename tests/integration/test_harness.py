"""The harness itself: Mount.stop() leaves no mount behind, also when the daemon died."""
import signal
import time

from conftest import Mount, make_config, mounted


def test_stop_unmounts_a_mount_whose_daemon_died(tmp_path, token, agents):
    ag = agents(1)
    m = Mount(tmp_path, make_config(tmp_path / "hosts.json", ag, token))
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    time.sleep(1.5)  # past the kernel's attribute cache: stat now fails with ENOTCONN
    assert mounted(m.mnt)  # dead, still listed, though os.path.ismount() says False
    m.stop()
    assert not mounted(m.mnt)
    assert not m.mnt.exists()
