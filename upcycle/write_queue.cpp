// WriteQueue (see write_queue.h).
#include "upcycle/write_queue.h"

#include <cstdlib>

#include "checkpoint/shard_writer.h"
#include "core/check.h"

namespace moekit::upcycle {

void AlignedBytes::Free::operator()(uint8_t* p) const { std::free(p); }

void AlignedBytes::grow(size_t n) {
  if (n <= cap_) return;
  void* q = nullptr;
  MOEKIT_CHECK(::posix_memalign(&q, checkpoint::ShardWriter::kDirectAlign, n) == 0, "out of memory for a ", n,
               "-byte write buffer");
  p_.reset(static_cast<uint8_t*>(q));
  cap_ = n;
}

WriteQueue::WriteQueue(checkpoint::ShardWriter* writer, int io_threads, size_t max_buffers)
    : writer_(writer), max_buffers_(max_buffers) {
  MOEKIT_CHECK(io_threads >= 1 && max_buffers >= 1, "WriteQueue: need at least one I/O thread and one buffer (got ",
               io_threads, ", ", max_buffers, ")");
  for (int i = 0; i < io_threads; ++i) threads_.emplace_back([this] { io_loop(); });
}

WriteQueue::~WriteQueue() {
  std::deque<Job> dropped;  // destroyed after the lock is released: buffers recycle themselves
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    dropped.swap(jobs_);
  }
  job_ready_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void WriteQueue::rethrow_locked() {
  if (error_) std::rethrow_exception(error_);
}

WriteQueue::Buffer WriteQueue::acquire(size_t n) {
  std::unique_ptr<AlignedBytes> b;
  {
    std::unique_lock<std::mutex> lock(mu_);
    buffer_free_.wait(lock, [&] { return error_ || out_ < max_buffers_; });
    rethrow_locked();
    ++out_;
    if (!free_.empty()) {
      b = std::move(free_.back());
      free_.pop_back();
    }
  }
  if (!b) b = std::make_unique<AlignedBytes>();
  Buffer buf(b.release(), Recycle{this});
  buf->grow(n);  // outside the lock: a fresh 2 MB buffer faults its pages in
  return buf;
}

void WriteQueue::recycle(AlignedBytes* b) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace_back(b);
    --out_;
  }
  buffer_free_.notify_one();
}

void WriteQueue::submit(Buffer buf, size_t tensor, uint64_t offset, size_t n) {
  MOEKIT_CHECK(buf && n <= buf->capacity(), "WriteQueue::submit: ", n, " bytes from a buffer of ",
               buf ? buf->capacity() : 0);
  {
    std::lock_guard<std::mutex> lock(mu_);
    rethrow_locked();
    jobs_.push_back(Job{std::move(buf), tensor, offset, n});
  }
  job_ready_.notify_one();
}

void WriteQueue::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait(lock, [&] { return error_ || (jobs_.empty() && busy_ == 0); });
  rethrow_locked();
}

void WriteQueue::io_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    job_ready_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
    if (stop_) return;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    ++busy_;
    lock.unlock();
    std::exception_ptr err;
    try {
      writer_->write(job.tensor, job.offset, job.buf->data(), job.n);
    } catch (...) {
      err = std::current_exception();
    }
    job.buf.reset();  // back to the pool (takes the lock itself)
    std::deque<Job> dropped;
    lock.lock();
    --busy_;
    if (err) {
      if (!error_) error_ = err;
      dropped.swap(jobs_);  // nothing more gets written after a failure
      buffer_free_.notify_all();
    }
    if (err || (jobs_.empty() && busy_ == 0)) idle_.notify_all();
    if (!dropped.empty()) {
      lock.unlock();
      dropped.clear();
      lock.lock();
    }
  }
}

}  // namespace moekit::upcycle
