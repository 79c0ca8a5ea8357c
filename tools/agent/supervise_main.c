/* clusterfs-agent-supervise: the per-task supervisor that clusterfs-agent runs for each
 * task (see supervisor.h). Not meant to be run by hand. */
#include "tools/agent/supervisor.h"

int main(int argc, char **argv)
{
	return supervisor_main(argc, argv);
}
