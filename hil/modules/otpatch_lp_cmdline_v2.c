// SPDX-License-Identifier: GPL-2.0
/* The cumulative successor of otpatch_lp_cmdline: same patch, another marker. */
#define OTPATCH_LP_MARKER "v2"
#include "otpatch_lp_cmdline.c"
