// SPDX-License-Identifier: GPL-2.0
/*
 * otpatch HIL livepatch: replaces the function behind /proc/cmdline so that a
 * test can see from user space which patch is live.
 *
 * Reading /proc/cmdline gives the real command line followed by
 * " otpatch.livepatch=<marker>". The same source builds the cumulative v2
 * (otpatch_lp_cmdline_v2.c defines another marker); both set .replace, so
 * loading v2 atomically replaces v1 instead of stacking on top of it, which
 * is how otpatchd ships livepatches (one cumulative patch per kernel build).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

#include "otpatch_lp_sym.h"

#ifndef OTPATCH_LP_MARKER
#define OTPATCH_LP_MARKER "v1"
#endif

/* saved_command_line is not exported; its address is read once at init. */
static char **otpatch_saved_cmdline;

/* The replacement for cmdline_proc_show() in fs/proc/cmdline.c. */
static int otpatch_cmdline_show(struct seq_file *m, void *v)
{
	seq_puts(m, *otpatch_saved_cmdline);
	seq_puts(m, " otpatch.livepatch=" OTPATCH_LP_MARKER "\n");
	return 0;
}

static struct klp_func otpatch_funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = otpatch_cmdline_show,
	},
	{}
};

/* .name NULL: the patched function lives in vmlinux, not in a module. */
static struct klp_object otpatch_objs[] = {
	{ .funcs = otpatch_funcs },
	{}
};

static struct klp_patch otpatch_patch = {
	.mod = THIS_MODULE,
	.objs = otpatch_objs,
	.replace = true,
};

static int __init otpatch_lp_init(void)
{
	otpatch_saved_cmdline = (char **)otpatch_lookup("saved_command_line");
	if (!otpatch_saved_cmdline || !*otpatch_saved_cmdline) {
		pr_err("cannot find saved_command_line\n");
		return -ENOENT;
	}
	return klp_enable_patch(&otpatch_patch);
}

/* Nothing to undo: the livepatch core releases the patch after it is disabled. */
static void __exit otpatch_lp_exit(void)
{
}

module_init(otpatch_lp_init);
module_exit(otpatch_lp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("otpatch HIL test livepatch: marks /proc/cmdline");
MODULE_INFO(livepatch, "Y");
