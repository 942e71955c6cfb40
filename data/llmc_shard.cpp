// llm.c token shard reader (header and size validated before any token is read) and writer.
#include "data/llmc_shard.h"

#include <fstream>

#include "core/check.h"

namespace moekit::data {

namespace {
// Other llm.c files share the 256-int32 header; naming them turns a confusing "bad magic" into
// a clear "wrong kind of file".
constexpr int32_t kLlmcMagicEval = 20240522;        // HellaSwag/MMLU eval files
constexpr int32_t kLlmcMagicModel = 20240326;       // model checkpoints
constexpr int32_t kLlmcMagicTrainState = 20240527;  // optimizer/state files
}  // namespace

bool is_llmc_shard(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  int32_t magic = 0;
  if (!f.read(reinterpret_cast<char*>(&magic), 4)) return false;
  return magic == kLlmcMagicGpt2 || magic == kLlmcMagicLlama3;
}

LlmcShard::LlmcShard(const std::string& path) : file_(path) {
  const uint64_t size = file_.size();
  MOEKIT_CHECK(size >= static_cast<uint64_t>(kLlmcHeaderBytes), path, ": truncated: ", size,
               " bytes, an llm.c shard header alone is ", kLlmcHeaderBytes);
  const uint8_t* p = file_.data();
  const int32_t magic = load_le<int32_t>(p), version = load_le<int32_t>(p + 4), count = load_le<int32_t>(p + 8);
  if (magic == kLlmcMagicGpt2) {
    variant_ = LlmcVariant::kGpt2;
    MOEKIT_CHECK(version == 1, path, ": llm.c GPT-2 shard (magic ", magic, ") has version ", version, ", expected 1");
  } else if (magic == kLlmcMagicLlama3) {
    variant_ = LlmcVariant::kLlama3;
    MOEKIT_CHECK(version == 7, path, ": llm.c Llama-3 shard (magic ", magic, ") has version ", version,
                 ", expected 7");
  } else if (magic == kLlmcMagicEval || magic == kLlmcMagicModel || magic == kLlmcMagicTrainState) {
    MOEKIT_FAIL(path, ": an llm.c ", magic == kLlmcMagicEval ? "eval" : magic == kLlmcMagicModel ? "model" : "state",
                " file (magic ", magic, "), not a token shard");
  } else {
    MOEKIT_FAIL(path, ": bad magic ", magic, " (expected llm.c token shard magic ", kLlmcMagicGpt2, " or ",
                kLlmcMagicLlama3, ")");
  }
  MOEKIT_CHECK(count >= 0, path, ": token count ", count, " in the header is negative");
  const uint64_t expect = kLlmcHeaderBytes + static_cast<uint64_t>(count) * token_itemsize(dtype());
  MOEKIT_CHECK(size == expect, path, ": size ", size, " bytes, but the header's token count ", count, " needs ",
               expect, " (1024 + ", token_itemsize(dtype()), " * count)");
  num_tokens_ = count;
}

void LlmcShard::read(int64_t offset, int64_t count, int64_t* out) const {
  MOEKIT_CHECK(offset >= 0 && count >= 0 && offset + count <= num_tokens_, path(), ": tokens [", offset, ", ",
               offset + count, ") out of range [0, ", num_tokens_, ")");
  const int item = token_itemsize(dtype());
  widen_tokens(file_.data() + kLlmcHeaderBytes + offset * item, dtype(), count, out);
}

void write_llmc_shard(const std::string& path, const std::vector<int64_t>& tokens, LlmcVariant variant) {
  const bool gpt2 = variant == LlmcVariant::kGpt2;
  const int64_t max_token = gpt2 ? 65535 : 4294967295ll;
  MOEKIT_CHECK(tokens.size() <= 2147483647u, path, ": ", tokens.size(), " tokens exceed the int32 count of an llm.c shard");
  int32_t header[256] = {};
  header[0] = gpt2 ? kLlmcMagicGpt2 : kLlmcMagicLlama3;
  header[1] = gpt2 ? 1 : 7;
  header[2] = static_cast<int32_t>(tokens.size());
  AtomicWriter w(path);
  w.write(header, sizeof(header));
  std::vector<uint8_t> buf(tokens.size() * (gpt2 ? 2 : 4));
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t t = tokens[i];
    MOEKIT_CHECK(t >= 0 && t <= max_token, path, ": token ", i, " = ", t, " does not fit ", gpt2 ? "uint16" : "uint32");
    if (gpt2) {
      const uint16_t v = static_cast<uint16_t>(t);
      std::memcpy(&buf[2 * i], &v, 2);
    } else {
      const uint32_t v = static_cast<uint32_t>(t);
      std::memcpy(&buf[4 * i], &v, 4);
    }
  }
  w.write(buf.data(), buf.size());
  w.commit();
}

}  // namespace moekit::data
