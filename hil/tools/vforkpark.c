/*
 * Parks a task inside the vfork system call for the livepatch-stall scenario.
 *
 * usage: vforkpark SECONDS
 *
 * The parent calls vfork(); the child sleeps SECONDS (or until killed) and
 * then exits. Until then the parent sleeps killable in the kernel below
 * __x64_sys_vfork(), which keeps a livepatch of that function from
 * switching it. Only raw system calls run in the child: it shares the
 * parent's memory and stack, so it must not touch libc state.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct timespec ts = { 0, 0 };
	pid_t pid;

	if (argc != 2) {
		fprintf(stderr, "usage: vforkpark SECONDS\n");
		return 2;
	}
	ts.tv_sec = atol(argv[1]);
	pid = vfork();
	if (pid == 0) {
		syscall(SYS_nanosleep, &ts, NULL);
		syscall(SYS_exit, 0);
	}
	if (pid < 0) {
		perror("vfork");
		return 1;
	}
	printf("vforkpark: child %d done\n", (int)pid);
	return 0;
}
