// WriteQueue: hands finished slabs to dedicated I/O threads, so the compute threads never
// block in a write. Direct (O_DIRECT) writes block until the device has the data; with the
// compute threads doing their own writes, a core sat idle for every write in flight, and the
// only cure was more threads than cores, which then thrashed each core's L2 between slabs.
// Now the compute threads (one per core) fill buffers taken from a bounded pool and submit
// them; the I/O threads write them with ShardWriter::write and return them to the pool. The
// pool bounds the memory and makes a slow disk push back on the compute threads.
//
// Every byte still goes to the offset its slab names, so the output does not depend on which
// thread wrote what, or when. A failed write (a full disk) is kept and rethrown by the next
// acquire(), submit() or drain(), so the run stops with the writer's message.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace moekit::checkpoint {
class ShardWriter;
}

namespace moekit::upcycle {

// A grow-only byte buffer aligned for O_DIRECT (ShardWriter::kDirectAlign).
class AlignedBytes {
 public:
  uint8_t* data() { return p_.get(); }
  size_t capacity() const { return cap_; }
  void grow(size_t n);  // keeps nothing: the old contents are dropped when it grows

 private:
  struct Free {
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t, Free> p_;
  size_t cap_ = 0;
};

class WriteQueue {
 public:
  // io_threads >= 1 writer threads; at most max_buffers buffers exist at once (>= 1).
  WriteQueue(checkpoint::ShardWriter* writer, int io_threads, size_t max_buffers);
  ~WriteQueue();  // stops the I/O threads; pending writes are dropped (call drain() first)
  WriteQueue(const WriteQueue&) = delete;
  WriteQueue& operator=(const WriteQueue&) = delete;

  // A pool buffer: it goes back to the pool when dropped, written or not.
  struct Recycle {
    WriteQueue* q = nullptr;
    void operator()(AlignedBytes* b) const { q->recycle(b); }
  };
  using Buffer = std::unique_ptr<AlignedBytes, Recycle>;

  // A buffer of at least n bytes, waiting while all max_buffers are in use.
  Buffer acquire(size_t n);
  // Queues bytes [0, n) of buf for ShardWriter::write(tensor, offset, ...); takes the buffer.
  void submit(Buffer buf, size_t tensor, uint64_t offset, size_t n);
  // Waits until every submitted write is done; rethrows the first write error.
  void drain();

  int io_threads() const { return static_cast<int>(threads_.size()); }

 private:
  struct Job {
    Buffer buf;
    size_t tensor = 0;
    uint64_t offset = 0;
    size_t n = 0;
  };
  void io_loop();
  void recycle(AlignedBytes* b);
  void rethrow_locked();

  checkpoint::ShardWriter* writer_;
  const size_t max_buffers_;
  std::mutex mu_;
  std::condition_variable job_ready_, buffer_free_, idle_;
  std::deque<Job> jobs_;
  std::vector<std::unique_ptr<AlignedBytes>> free_;
  size_t out_ = 0;      // buffers handed out (being filled, queued or being written)
  size_t busy_ = 0;     // writes in progress
  bool stop_ = false;
  std::exception_ptr error_;
  std::vector<std::thread> threads_;
};

}  // namespace moekit::upcycle
