// SPDX-License-Identifier: GPL-2.0-only
/*
 * Example otpatch livepatch: /proc/version gains a suffix while the patch is enabled, which makes it easy to
 * see on a gateway whether otpatchd applied (or rolled back) the bundle:
 *
 *   cat /proc/version        ->  Linux version 6.18... #1 SMP ... [otpatch livepatch example]
 *
 * version_proc_show() is reached through a function pointer (proc_create_single), so the compiler cannot
 * inline it and livepatch can redirect it. A real fix replaces the function it repairs instead.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>
#include <linux/utsname.h>

static int otpatch_version_proc_show(struct seq_file *m, void *v)
{
	/* Only inline helpers and exported symbols: a livepatch module cannot link to the kernel's private
	 * linux_proc_banner without klp relocations, which this example does not need. */
	seq_printf(m, "%s version %s %s [otpatch livepatch example]\n",
		   utsname()->sysname, utsname()->release, utsname()->version);
	return 0;
}

static struct klp_func otpatch_funcs[] = {
	{
		.old_name = "version_proc_show",
		.new_func = otpatch_version_proc_show,
	},
	{}
};

static struct klp_object otpatch_objs[] = {
	{
		/* NULL name: the function lives in vmlinux, not in a module. */
		.funcs = otpatch_funcs,
	},
	{}
};

static struct klp_patch otpatch_patch = {
	.mod = THIS_MODULE,
	.objs = otpatch_objs,
};

static int __init otpatch_example_init(void)
{
	return klp_enable_patch(&otpatch_patch);
}

static void __exit otpatch_example_exit(void)
{
}

module_init(otpatch_example_init);
module_exit(otpatch_example_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("otpatch example livepatch for /proc/version");
MODULE_INFO(livepatch, "Y");
