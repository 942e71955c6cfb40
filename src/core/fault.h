// Fault injection for the crash and disk-full tests (never set in normal runs; docs/RELIABILITY.md).
//   MOEKIT_DEBUG_FAULT=<point>[@N]          SIGKILL this process the N-th time (default 1st) it
//                                           reaches <point>
//   MOEKIT_DEBUG_FAULT=<point>[@N]:enospc   from the N-th time on, the write at <point> fails as
//                                           on a full disk (ENOSPC)
// Points are named where they are: ckpt.rank_file, ckpt.meta, ckpt.install, ckpt.latest,
// ckpt.prune (the checkpoint commit, in order). The variable is read once; unset, a point costs
// a string comparison.
#pragma once

namespace moekit {

// True when `point` is the configured enospc point (the caller then fails its write with
// ENOSPC); raises SIGKILL when `point` is the configured kill point; false otherwise.
bool fault_point(const char* point);

}  // namespace moekit
