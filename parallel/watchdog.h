// Watchdog: ends the job when a collective does not finish in time, instead of letting every
// rank wait forever on a peer that is gone (a host cut off by the network, a rank stuck in a
// kernel, ranks that took different branches). Every Communicator backend gets it: the public
// collectives of communicator.h open a Watchdog::Scope around the backend's call, and a monitor
// thread compares the scope's age with the deadline.
//
// Deadlines (docs/PARALLEL.md section 7), with "longest step" the longest training step so far
// (forward, backward, gradient sync and update: what run_step() times):
//  - inside a training step: max(parallel.step_timeout, parallel.timeout_steps x longest step),
//    by default max(40 s, 5 x longest step). A rank waits inside a step only for the other
//    ranks' share of the same step, so a wait of several whole steps means a peer is gone;
//    with steps under 8 s a network partition ends the job in under a minute.
//  - between steps (evaluation, checkpoints, the stop agreement):
//    max(parallel.timeout, parallel.timeout_steps x longest step), by default 300 s: a
//    checkpoint's barrier waits for the slowest rank's write.
//  - before the first step (start-up: data checks, weight loading, rank 0 verifying a
//    checkpoint while the others wait in a broadcast): not timed, as nothing gives a scale.
// A collective that was already waiting when a stop signal arrived (SIGTERM: preemption, or
// Slurm ending a step one of whose ranks died) may go on waiting for max(10 s, 2 x the longest
// step) only: its peers are inside the same step, so one that has not come by then is gone, and
// waiting longer would only let the launcher's SIGKILL come first. Collectives that start after
// the signal (the stop agreement, the checkpoint) keep their ordinary deadline.
//
// On expiry the monitor thread prints "moekit: error (rank R of W): watchdog: step N: COLLECTIVE
// (BYTES) on group 'G' (...) has not finished after S s (...); waiting for one or more of its
// peers: rank P on HOST, ..." (a blocking collective cannot tell which peer is missing: the
// ranks that print no such message are) and calls the group's Communicator::abort (NCCL:
// ncclCommAbort first; then MPI_Abort), with exit code kWatchdogExitCode. A backend whose wait
// is a polling loop (NCCL) also checks overdue() itself, so the abort happens on whichever
// thread sees it first (once). If MPI_Abort cannot reach the launcher (the link is down), the
// process exits by itself 5 s later.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace moekit::parallel {

class Communicator;

// EX_TEMPFAIL: the job may succeed when started again (resume=auto), e.g. after a network fault.
constexpr int kWatchdogExitCode = 75;

struct WatchdogConfig {
  double timeout_s = 0;        // between steps, seconds; 0 turns the watchdog off
  double step_timeout_s = 40;  // inside a training step, seconds
  double timeout_steps = 5;    // every deadline >= this many times the longest step so far
};

class Watchdog {
 public:
  // The process's watchdog (collectives are made by one thread, so one is enough).
  static Watchdog& instance();
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Sets the deadline and starts the monitor thread (timeout_s > 0) or stops it (0).
  void configure(const WatchdogConfig& cfg);
  void stop();  // joins the monitor thread and forgets the steps (configure() starts anew)
  // Host of every world rank, for messages (parallel/bootstrap.cpp gathers them).
  void set_hosts(std::vector<std::string> hosts);

  // Runs training step `step` (1-based) as fn(): arms the watchdog, applies the in-step
  // deadline to fn's collectives and times fn for the scaling.
  template <typename Fn>
  auto run_step(int64_t step, Fn&& fn) {
    struct End {
      Watchdog* w;
      ~End() { w->end_step(); }
    } end{this};
    begin_step(step);
    return fn();
  }
  void begin_step(int64_t step);
  void end_step();
  // Async-signal-safe: a stop signal arrived (called from the trainer's signal handler).
  static void note_stop_signal();

  // The deadline that applies now in seconds (0: not armed), and whether the collective in
  // flight is past its deadline (for backends that poll, e.g. NCCL's wait loop).
  double deadline_s() const;
  bool overdue() const;
  // Prints the message for the collective in flight and aborts through its communicator.
  // Idempotent across threads: the first caller aborts, later ones wait for the end.
  [[noreturn]] void fire();

  // A collective in flight (communicator.cpp opens one around every backend call).
  class Scope {
   public:
    Scope(Communicator& comm, const char* op, int64_t bytes);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    // The enclosing collective, if any (a backend may build one collective from another).
    Communicator* prev_comm_;
    const char* prev_op_;
    int64_t prev_bytes_;
    double prev_start_;
  };

 private:
  Watchdog() = default;
  void run();  // the monitor thread
  double limit_locked(bool after_stop) const;
  std::string limit_text_locked(bool after_stop) const;
  bool late_after_stop_locked(double now) const;
  std::string describe_locked(const Communicator& comm, const char* op, int64_t bytes, double waited_s,
                              bool after_stop) const;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
  bool running_ = false;
  WatchdogConfig cfg_;
  std::vector<std::string> hosts_;
  // Steps (monotonic seconds).
  int64_t step_ = 0;  // 0: before the first step (not armed)
  bool in_step_ = false;
  double step_start_ = 0, longest_step_ = 0;
  // The collective in flight (op_ == nullptr: none).
  Communicator* comm_ = nullptr;
  const char* op_ = nullptr;
  int64_t bytes_ = 0;
  double op_start_ = 0;
};

inline Watchdog& watchdog() { return Watchdog::instance(); }

}  // namespace moekit::parallel
