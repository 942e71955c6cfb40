#include "parallel/watchdog.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "parallel/communicator.h"

namespace moekit::parallel {

namespace {

// CLOCK_MONOTONIC in seconds; clock_gettime is async-signal-safe, so the signal handler and the
// threads read the same clock.
double now_s() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

std::atomic<int64_t> g_stop_ns{0};  // when the first stop signal arrived (0: none)
std::atomic<bool> g_fired{false};

// Slack after a stop signal (header comment).
constexpr double kStopGraceS = 10;
// How often the monitor thread looks when a collective is in flight. Short against any
// deadline (>= 1 s in practice), long against the cost of a wake-up.
constexpr auto kPoll = std::chrono::milliseconds(200);
// If the abort path itself hangs (MPI_Abort trying to reach a launcher that is cut off), the
// process ends anyway after this long.
constexpr unsigned kAbortBackstopS = 5;

std::string human_bytes(int64_t b) {
  std::ostringstream os;
  if (b >= (int64_t{1} << 20)) os << static_cast<double>(b) / (1 << 20) << " MiB";
  else if (b >= 1024) os << static_cast<double>(b) / 1024 << " KiB";
  else os << b << " B";
  return os.str();
}

}  // namespace

Watchdog& Watchdog::instance() {
  static Watchdog w;
  return w;
}

Watchdog::~Watchdog() { stop(); }

void Watchdog::configure(const WatchdogConfig& cfg) {
  stop();
  std::lock_guard<std::mutex> lk(mu_);
  cfg_ = cfg;
  step_ = 0;
  in_step_ = false;
  longest_step_ = 0;
  if (cfg_.timeout_s <= 0) return;
  running_ = true;
  thread_ = std::thread([this] { run(); });
}

void Watchdog::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    running_ = false;
    step_ = 0;
    in_step_ = false;
  }
  cv_.notify_all();
  if (!thread_.joinable()) return;
  // exit() from the abort path runs on the monitor thread itself, and a thread cannot join itself.
  if (thread_.get_id() == std::this_thread::get_id()) thread_.detach();
  else thread_.join();
}

void Watchdog::set_hosts(std::vector<std::string> hosts) {
  std::lock_guard<std::mutex> lk(mu_);
  hosts_ = std::move(hosts);
}

void Watchdog::begin_step(int64_t step) {
  std::lock_guard<std::mutex> lk(mu_);
  step_ = step;
  in_step_ = true;
  step_start_ = now_s();
}

void Watchdog::end_step() {
  const double t = now_s();
  std::lock_guard<std::mutex> lk(mu_);
  if (!in_step_) return;
  longest_step_ = std::max(longest_step_, t - step_start_);
  in_step_ = false;
}

void Watchdog::note_stop_signal() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t expected = 0;
  g_stop_ns.compare_exchange_strong(expected, int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec);
}

double Watchdog::limit_locked(bool after_stop) const {
  if (after_stop) return std::max(kStopGraceS, 2 * longest_step_);
  return std::max(in_step_ ? cfg_.step_timeout_s : cfg_.timeout_s, cfg_.timeout_steps * longest_step_);
}

std::string Watchdog::limit_text_locked(bool after_stop) const {
  std::ostringstream os;
  os.precision(3);
  if (after_stop)
    os << "a stop signal arrived while it waited; the limit is then max(" << kStopGraceS << " s, 2 x longest step "
       << longest_step_ << " s)";
  else if (in_step_)
    os << "inside the step; limit max(parallel.step_timeout " << cfg_.step_timeout_s << " s, parallel.timeout_steps "
       << cfg_.timeout_steps << " x longest step " << longest_step_ << " s)";
  else
    os << "between steps; limit max(parallel.timeout " << cfg_.timeout_s << " s, parallel.timeout_steps "
       << cfg_.timeout_steps << " x longest step " << longest_step_ << " s)";
  return os.str();
}

double Watchdog::deadline_s() const {
  std::lock_guard<std::mutex> lk(mu_);
  return cfg_.timeout_s > 0 && step_ > 0 ? limit_locked(false) : 0.0;
}

bool Watchdog::overdue() const {
  std::lock_guard<std::mutex> lk(mu_);
  if (cfg_.timeout_s <= 0 || step_ == 0 || !op_) return false;
  const double t = now_s();
  if (t - op_start_ > limit_locked(false)) return true;
  return late_after_stop_locked(t);
}

bool Watchdog::late_after_stop_locked(double t) const {
  const int64_t stop_ns = g_stop_ns.load();
  if (stop_ns == 0) return false;
  const double stop = 1e-9 * static_cast<double>(stop_ns);
  return op_start_ < stop && t - stop > limit_locked(true);
}

std::string Watchdog::describe_locked(const Communicator& comm, const char* op, int64_t bytes, double waited_s,
                                      bool after_stop) const {
  std::ostringstream os;
  os.precision(3);
  os << "watchdog: ";
  if (step_ > 0) os << "step " << step_ << ": ";
  os << op << " (" << human_bytes(bytes) << ") on group '" << comm.name() << "' (rank " << comm.rank() << " of "
     << comm.size() << ") has not finished after " << waited_s << " s (" << limit_text_locked(after_stop);
  os << "); waiting for one or more of its peers:";
  bool any = false;
  for (int w : comm.members()) {
    if (w == comm.world_rank()) continue;
    os << (any ? ", " : " ") << "rank " << w;
    if (w >= 0 && w < static_cast<int>(hosts_.size())) os << " on " << hosts_[w];
    any = true;
  }
  if (!any) os << " none";
  os << "; aborting the job (resume with --set resume=auto)";
  return os.str();
}

void Watchdog::fire() {
  if (g_fired.exchange(true)) {
    for (;;) pause();  // another thread is aborting the process
  }
  Communicator* comm = nullptr;
  std::string msg;
  {
    std::lock_guard<std::mutex> lk(mu_);
    const double t = now_s();
    const bool after_stop = op_ && t - op_start_ <= limit_locked(false);
    comm = comm_;
    msg = comm ? describe_locked(*comm, op_, bytes_, t - op_start_, after_stop) : "watchdog: no collective in flight";
  }
  // The abort below may block on a launcher that cannot be reached; this one cannot.
  std::thread([] {
    sleep(kAbortBackstopS);
    std::fprintf(stderr, "moekit: error: watchdog: the abort did not end the process in %u s; exiting\n",
                 kAbortBackstopS);
    _exit(kWatchdogExitCode);
  }).detach();
  if (comm) comm->abort(kWatchdogExitCode, msg);
  abort_job(kWatchdogExitCode, msg);
}

void Watchdog::run() {
  std::unique_lock<std::mutex> lk(mu_);
  while (running_) {
    cv_.wait_for(lk, kPoll);
    if (!running_ || step_ == 0 || !op_) continue;
    const double t = now_s();
    if (t - op_start_ <= limit_locked(false) && !late_after_stop_locked(t)) continue;
    lk.unlock();
    fire();
  }
}

Watchdog::Scope::Scope(Communicator& comm, const char* op, int64_t bytes) {
  Watchdog& w = instance();
  std::lock_guard<std::mutex> lk(w.mu_);
  prev_comm_ = w.comm_;
  prev_op_ = w.op_;
  prev_bytes_ = w.bytes_;
  prev_start_ = w.op_start_;
  w.comm_ = &comm;
  w.op_ = op;
  w.bytes_ = bytes;
  w.op_start_ = now_s();
}

Watchdog::Scope::~Scope() {
  Watchdog& w = instance();
  std::lock_guard<std::mutex> lk(w.mu_);
  w.comm_ = prev_comm_;
  w.op_ = prev_op_;
  w.bytes_ = prev_bytes_;
  w.op_start_ = prev_start_;
}

}  // namespace moekit::parallel
