// Tests of upcycle/write_queue: slabs submitted from several threads in any order land where
// they say (the files equal write_sharded's), the pool never hands out more than its buffers
// and blocks until one comes back, and a failed write is rethrown by the next call, with the
// writer's message, instead of being lost on an I/O thread.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "checkpoint/safetensors.h"
#include "checkpoint/shard_writer.h"
#include "core/check.h"
#include "upcycle/write_queue.h"
#include "upcycle_test_util.h"

namespace moekit::upcycle {
namespace {

using checkpoint::ShardEntry;
using checkpoint::ShardWriter;
using checkpoint::ShardWriterOptions;
using test::TempDirTest;
namespace fs = std::filesystem;

class WriteQueueTest : public TempDirTest {};

TEST_F(WriteQueueTest, SlabsFromManyThreadsLandInPlace) {
  // Three tensors cut into 1000-byte slabs, submitted by 4 threads in a shuffled order.
  const std::vector<ShardEntry> entries = {
      {"a", DType::kBF16, {3000}}, {"b", DType::kF32, {2500}}, {"c", DType::kBF16, {1, 777}}};
  std::vector<std::vector<uint8_t>> want;
  std::mt19937 rng(11);
  struct Slab {
    size_t t;
    uint64_t off;
    size_t n;
  };
  std::vector<Slab> slabs;
  for (size_t t = 0; t < entries.size(); ++t) {
    want.emplace_back(static_cast<size_t>(shape_numel(entries[t].shape)) * dtype_size(entries[t].dtype));
    for (auto& x : want.back()) x = static_cast<uint8_t>(rng());
    for (uint64_t o = 0; o < want.back().size(); o += 1000)
      slabs.push_back({t, o, std::min<size_t>(1000, want.back().size() - o)});
  }
  std::shuffle(slabs.begin(), slabs.end(), rng);
  fs::create_directories(path("q"));
  ShardWriter w(path("q"), entries, ShardWriterOptions{8000, 4096, true});
  {
    WriteQueue q(&w, 3, 4);
    std::atomic<size_t> next{0};
    std::vector<std::thread> producers;
    for (int p = 0; p < 4; ++p)
      producers.emplace_back([&] {
        for (size_t i = next++; i < slabs.size(); i = next++) {
          const Slab& s = slabs[i];
          WriteQueue::Buffer buf = q.acquire(s.n);
          std::memcpy(buf->data(), want[s.t].data() + s.off, s.n);
          q.submit(std::move(buf), s.t, s.off, s.n);
        }
      });
    for (auto& t : producers) t.join();
    q.drain();
    EXPECT_EQ(q.io_threads(), 3);
  }
  w.finish();
  const auto dir = checkpoint::SafetensorsDir::open(path("q"));
  for (size_t t = 0; t < entries.size(); ++t) {
    const HostTensor got = dir.read(entries[t].name);
    ASSERT_EQ(got.nbytes(), want[t].size());
    EXPECT_EQ(0, std::memcmp(got.storage.data(), want[t].data(), want[t].size())) << entries[t].name;
  }
}

TEST_F(WriteQueueTest, AcquireWaitsForAFreeBuffer) {
  fs::create_directories(path("p"));
  ShardWriter w(path("p"), {{"x", DType::kF32, {16}}}, ShardWriterOptions{});
  WriteQueue q(&w, 1, 2);
  WriteQueue::Buffer a = q.acquire(64), b = q.acquire(64);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % ShardWriter::kDirectAlign, 0u);
  std::atomic<bool> got{false};
  std::thread t([&] {
    WriteQueue::Buffer c = q.acquire(64);  // blocks: both buffers are out
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(got.load());
  b.reset();  // dropped unwritten: back to the pool all the same
  t.join();
  EXPECT_TRUE(got.load());
  std::memset(a->data(), 0, 64);
  q.submit(std::move(a), 0, 0, 64);
  q.drain();
  w.finish();
}

TEST_F(WriteQueueTest, AWriteErrorIsRethrownNotLost) {
  fs::create_directories(path("e"));
  ShardWriter w(path("e"), {{"x", DType::kF32, {16}}}, ShardWriterOptions{});
  WriteQueue q(&w, 2, 4);
  WriteQueue::Buffer buf = q.acquire(128);
  std::memset(buf->data(), 0, 128);
  q.submit(std::move(buf), 0, 0, 128);  // 128 bytes into a 64-byte tensor: the writer refuses
  try {
    q.drain();
    FAIL() << "drain() returned after a failed write";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("runs past the end of tensor 'x'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(q.acquire(8), Error);  // and every later call fails the same way
}

}  // namespace
}  // namespace moekit::upcycle
