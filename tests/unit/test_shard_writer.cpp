// Tests of checkpoint/shard_writer: the streaming writer produces exactly the files of the
// in-memory write_sharded (the reference) whatever the order and thread of the writes, and it
// refuses out-of-range and incomplete writes by name.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <thread>

#include "checkpoint/safetensors.h"
#include "checkpoint/shard_writer.h"
#include "core/check.h"
#include "upcycle_test_util.h"

namespace moekit::checkpoint {
namespace {

using upcycle::test::TempDirTest;
namespace fs = std::filesystem;

struct Blob {
  std::string name;
  DType dtype;
  Shape shape;
  std::vector<uint8_t> bytes;
};

std::vector<Blob> blobs() {
  std::vector<Blob> out;
  std::mt19937 rng(7);
  const std::vector<std::pair<DType, Shape>> specs = {
      {DType::kF32, {100, 30}}, {DType::kBF16, {7}}, {DType::kF16, {64, 64}}, {DType::kI32, {3, 5, 2}},
      {DType::kF32, {2000}},    {DType::kBF16, {0, 4}}, {DType::kF32, {1}},  {DType::kI64, {33}}};
  for (size_t i = 0; i < specs.size(); ++i) {
    Blob b{"t." + std::to_string(i), specs[i].first, specs[i].second, {}};
    b.bytes.resize(static_cast<size_t>(shape_numel(b.shape)) * dtype_size(b.dtype));
    for (auto& x : b.bytes) x = static_cast<uint8_t>(rng());
    out.push_back(std::move(b));
  }
  return out;
}

class ShardWriterTest : public TempDirTest {};

TEST_F(ShardWriterTest, MatchesWriteShardedForAnyWriteOrder) {
  const auto bs = blobs();
  for (uint64_t limit : {uint64_t{5000000000}, uint64_t{9000}, uint64_t{100}}) {
    const std::string ref = path("ref" + std::to_string(limit)), got = path("got" + std::to_string(limit));
    std::vector<TensorRef> refs;
    std::vector<ShardEntry> entries;
    for (const auto& b : bs) {
      refs.push_back({b.name, b.dtype, b.shape, b.bytes.data()});
      entries.push_back({b.name, b.dtype, b.shape});
    }
    write_sharded(ref, refs, limit);
    fs::create_directories(got);
    ShardWriter w(got, entries, limit);
    // Pieces of 37 bytes in shuffled order from 4 threads.
    std::vector<std::tuple<size_t, uint64_t, size_t>> pieces;
    for (size_t t = 0; t < bs.size(); ++t)
      for (uint64_t o = 0; o < bs[t].bytes.size(); o += 37)
        pieces.emplace_back(t, o, std::min<size_t>(37, bs[t].bytes.size() - o));
    std::shuffle(pieces.begin(), pieces.end(), std::mt19937(limit));
    std::vector<std::thread> th;
    for (int k = 0; k < 4; ++k)
      th.emplace_back([&, k] {
        for (size_t i = static_cast<size_t>(k); i < pieces.size(); i += 4) {
          const auto [t, o, n] = pieces[i];
          w.write(t, o, bs[t].bytes.data() + o, n);
        }
      });
    for (auto& t : th) t.join();
    w.finish();
    EXPECT_EQ(upcycle::test::tree_bytes(ref), upcycle::test::tree_bytes(got)) << "limit " << limit;
    EXPECT_EQ(w.num_shards(), upcycle::test::listing(ref).size() - (w.num_shards() > 1 ? 1 : 0));
  }
}

TEST_F(ShardWriterTest, RefusesBadWritesAndIncompleteTensors) {
  const auto bs = blobs();
  std::vector<ShardEntry> entries;
  for (const auto& b : bs) entries.push_back({b.name, b.dtype, b.shape});
  fs::create_directories(path("w"));
  ShardWriter w(path("w"), entries, 9000);
  EXPECT_EQ(w.index("t.3"), 3u);
  EXPECT_THROW(w.index("nope"), Error);
  const uint8_t buf[16] = {};
  EXPECT_THROW(w.write(0, 11999, buf, 2), Error);  // 12000-byte tensor
  EXPECT_THROW(w.write(99, 0, buf, 1), Error);
  w.write(0, 0, buf, 16);
  try {
    w.finish();
    ADD_FAILURE() << "finish() accepted an incomplete checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'t.0' got 16 of its 12000 bytes"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ShardWriter(path("missing_dir"), entries), Error);
  entries.push_back(entries[0]);
  EXPECT_THROW(ShardWriter(path("w"), entries), Error);  // duplicate name
  EXPECT_THROW(ShardWriter(path("w"), {}), Error);
}

}  // namespace
}  // namespace moekit::checkpoint
