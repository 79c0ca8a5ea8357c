/* `clusterfs-agent --init DIR`: prepares what an agent needs to be added to a cluster, and
 * says how to add it. */
#pragma once

struct init_request {
	const char *dir;      /* created 0700 when missing */
	const char *name;     /* the node's name; NULL: the hostname */
	const char *listen;   /* "ADDR:PORT" the agent will listen on */
	const char *tls_cert; /* an existing certificate and key to use, or NULL: DIR/agent.crt */
	const char *tls_key;  /* and DIR/agent.key, made self-signed when missing */
};

/* Creates DIR/agent.token (32 random bytes in hex) and, unless given a pair, a self-signed
 * DIR/agent.crt and DIR/agent.key, all 0600. Files that exist are kept, never overwritten.
 * Reports each file on stderr; prints the hosts.json entry for this host and the command
 * that starts the agent on stdout. Returns 0, or -errno after logging why. */
int init_run(const struct init_request *req);
