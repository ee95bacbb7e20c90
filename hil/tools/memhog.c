/*
 * memhog MIB: a stand-in for a large OT process in the CRIU benchmark (hil scenario criu-bench).
 * Allocates MIB MiB, writes every page (non-zero data, so every page is resident and dumped), prints
 * "ready", then idles in pause() until killed. Built with gcc -static, like the other guest helpers.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long mib;
	size_t len, i;
	unsigned char *mem;

	if (argc != 2 || (mib = strtol(argv[1], NULL, 10)) <= 0) {
		fprintf(stderr, "usage: memhog MIB\n");
		return 2;
	}
	len = (size_t)mib << 20;
	mem = malloc(len);
	if (mem == NULL) {
		perror("malloc");
		return 1;
	}
	for (i = 0; i < len; i += 64)
		mem[i] = (unsigned char)(i >> 6) | 1;
	printf("ready %ld MiB\n", mib);
	fflush(stdout);
	for (;;)
		pause();
	return 0;
}
