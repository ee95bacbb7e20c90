/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Resolving non-exported kernel symbols at load time, for the HIL test modules.
 *
 * A production livepatch (kpatch-build, klp-convert) reaches non-exported
 * symbols through klp relocation sections that the livepatch core resolves.
 * These hand-written test modules have no such tooling, so they ask
 * kallsyms once at init instead. kallsyms_lookup_name() itself is no longer
 * exported (since 5.7), but a kprobe registered on it reports its address.
 */
#ifndef OTPATCH_LP_SYM_H
#define OTPATCH_LP_SYM_H

#include <linux/kprobes.h>

typedef unsigned long (*otpatch_lookup_fn)(const char *name);

static unsigned long otpatch_lookup(const char *name)
{
	static otpatch_lookup_fn lookup;

	if (!lookup) {
		struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };

		if (register_kprobe(&kp) < 0)
			return 0;
		lookup = (otpatch_lookup_fn)kp.addr;
		unregister_kprobe(&kp);
	}
	return lookup ? lookup(name) : 0;
}

#endif
