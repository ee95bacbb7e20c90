// SPDX-License-Identifier: GPL-2.0
/*
 * otpatch HIL livepatch whose transition cannot finish while a vfork parent
 * is waiting for its child.
 *
 * The livepatch consistency model switches a task to the new code only when
 * none of the patched functions is on its stack. This patch replaces the
 * vfork system call entry, __x64_sys_vfork(). A parent in vfork() sleeps in
 * the kernel below that function until its child execs or exits, and it
 * sleeps killable (TASK_KILLABLE), so the livepatch core's periodic "fake
 * signal" (sent after 15 s, it wakes only interruptible sleepers) does not
 * move it either. While such a parent exists, the transition stays pending:
 * exactly what a gateway process blocked in a patched syscall path does to a
 * real patch. Disabling the patch reverts the transition and it unloads.
 *
 * The replacement behaves like the original, so tasks already switched keep
 * a working vfork().
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/ptrace.h>

#include "otpatch_lp_sym.h"

/* kernel_clone() is not exported; its address is read once at init. */
static pid_t (*otpatch_kernel_clone)(struct kernel_clone_args *args);

static long otpatch_sys_vfork(const struct pt_regs *regs)
{
	struct kernel_clone_args args = {
		.flags = CLONE_VFORK | CLONE_VM,
		.exit_signal = SIGCHLD,
	};

	return otpatch_kernel_clone(&args);
}

static struct klp_func otpatch_funcs[] = {
	{
		.old_name = "__x64_sys_vfork",
		.new_func = otpatch_sys_vfork,
	},
	{}
};

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
	otpatch_kernel_clone = (void *)otpatch_lookup("kernel_clone");
	if (!otpatch_kernel_clone) {
		pr_err("cannot find kernel_clone\n");
		return -ENOENT;
	}
	return klp_enable_patch(&otpatch_patch);
}

static void __exit otpatch_lp_exit(void)
{
}

module_init(otpatch_lp_init);
module_exit(otpatch_lp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("otpatch HIL test livepatch: a transition that stalls on a vfork parent");
MODULE_INFO(livepatch, "Y");
