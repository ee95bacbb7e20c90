/*
 * Prints CLOCK_MONOTONIC in milliseconds: busybox date has no %N, and the
 * guest's timeline lines (HIL-TIME) need millisecond resolution. The guest's
 * monotonic clock starts at kernel boot, so the first reading in /init is
 * the kernel's boot time. Built with gcc -static: the guest has no libc of
 * its own beyond what ldd copies for the big binaries.
 */
#include <stdio.h>
#include <time.h>

int main(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
		perror("clock_gettime");
		return 1;
	}
	printf("%lld\n", (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
	return 0;
}
