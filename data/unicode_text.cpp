// UTF-8, NFC through ICU's Normalizer2 (UTF-8 in and out, no UTF-16 round trip), the byte-level
// alphabet and base64.
#include "data/unicode_text.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include <array>
#include <cstring>

#include "core/check.h"

namespace moekit::data {

size_t utf8_valid_prefix(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path: 8 bytes at a time.
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const uint8_t c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t lo = 0x80, hi = 0xBF;  // bounds of the second byte (shortest form, no surrogates)
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > n || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (int k = 2; k < len; ++k)
      if ((p[i + k] & 0xC0) != 0x80) return i;
    i += len;
  }
  return n;
}

uint32_t utf8_decode_at(std::string_view s, size_t i, int* len) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + i;
  if (p[0] < 0x80) {
    *len = 1;
    return p[0];
  }
  if (p[0] < 0xE0) {
    *len = 2;
    return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
  }
  if (p[0] < 0xF0) {
    *len = 3;
    return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
  }
  *len = 4;
  return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
}

void utf8_append(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {

const icu::Normalizer2& nfc_instance() {
  static const icu::Normalizer2* inst = [] {
    UErrorCode ec = U_ZERO_ERROR;
    const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(ec);
    MOEKIT_CHECK(U_SUCCESS(ec) && n != nullptr, "ICU: cannot load the NFC normalizer data (", u_errorName(ec), ")");
    return n;
  }();
  return *inst;
}

bool all_ascii(std::string_view s) {
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    if (w & 0x8080808080808080ull) return false;
  }
  for (; i < s.size(); ++i)
    if (static_cast<uint8_t>(s[i]) >= 0x80) return false;
  return true;
}

}  // namespace

bool nfc_normalize(std::string_view s, std::string* out) {
  if (all_ascii(s)) return false;
  const icu::Normalizer2& nfc = nfc_instance();
  MOEKIT_CHECK(s.size() < static_cast<size_t>(INT32_MAX), "NFC: text of ", s.size(), " bytes is over ICU's 2 GiB limit");
  UErrorCode ec = U_ZERO_ERROR;
  const icu::StringPiece sp(s.data(), static_cast<int32_t>(s.size()));
  if (nfc.isNormalizedUTF8(sp, ec) && U_SUCCESS(ec)) return false;
  ec = U_ZERO_ERROR;
  out->clear();
  out->reserve(s.size() + s.size() / 8);
  icu::StringByteSink<std::string> sink(out);
  nfc.normalizeUTF8(0, sp, sink, nullptr, ec);
  MOEKIT_CHECK(U_SUCCESS(ec), "NFC normalization failed (", u_errorName(ec), ")");
  return true;
}

bool nfc_boundary_before(uint32_t cp) { return nfc_instance().hasBoundaryBefore(static_cast<UChar32>(cp)); }

// ---- byte-level alphabet -------------------------------------------------------------------

namespace {

struct ByteAlphabet {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> from_cp{};  // code points 0..323 cover the alphabet (max U+0143)
  ByteAlphabet() {
    from_cp.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? static_cast<uint32_t>(b) : 256u + static_cast<uint32_t>(extra++);
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

}  // namespace

uint32_t byte_to_unicode(uint8_t b) { return alphabet().to_cp[b]; }

bool unicode_to_bytes(std::string_view s, std::string* out, uint32_t* bad_char) {
  out->clear();
  if (!utf8_valid(s)) {
    *bad_char = 0xFFFD;
    return false;
  }
  const ByteAlphabet& a = alphabet();
  for (size_t i = 0; i < s.size();) {
    int len;
    const uint32_t cp = utf8_decode_at(s, i, &len);
    if (cp >= a.from_cp.size() || a.from_cp[cp] < 0) {
      *bad_char = cp;
      return false;
    }
    out->push_back(static_cast<char>(a.from_cp[cp]));
    i += len;
  }
  return true;
}

std::string bytes_to_unicode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) utf8_append(byte_to_unicode(static_cast<uint8_t>(c)), &out);
  return out;
}

// ---- base64 --------------------------------------------------------------------------------

namespace {
constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int b64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace

bool base64_decode(std::string_view s, std::string* out) {
  out->clear();
  if (s.empty() || s.size() % 4 != 0) return false;
  for (size_t i = 0; i < s.size(); i += 4) {
    const bool last = i + 4 == s.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s[i + k];
      if (c == '=' && last && k >= 2) {
        v[k] = 0;
        ++pad;
      } else {
        if (pad > 0) return false;  // data after padding
        v[k] = b64_value(c);
        if (v[k] < 0) return false;
      }
    }
    const uint32_t w = (static_cast<uint32_t>(v[0]) << 18) | (static_cast<uint32_t>(v[1]) << 12) |
                       (static_cast<uint32_t>(v[2]) << 6) | static_cast<uint32_t>(v[3]);
    // Canonical form: the bits dropped by padding must be zero.
    if ((pad == 1 && (w & 0xFF) != 0) || (pad == 2 && (w & 0xFFFF) != 0)) return false;
    out->push_back(static_cast<char>(w >> 16));
    if (pad < 2) out->push_back(static_cast<char>((w >> 8) & 0xFF));
    if (pad < 1) out->push_back(static_cast<char>(w & 0xFF));
  }
  return true;
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t w = (p[i] << 16) | (p[i + 1] << 8) | p[i + 2];
    for (int k = 3; k >= 0; --k) out.push_back(kB64[(w >> (6 * k)) & 63]);
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    const uint32_t w = (p[i] << 16) | (rest == 2 ? (p[i + 1] << 8) : 0);
    out.push_back(kB64[(w >> 18) & 63]);
    out.push_back(kB64[(w >> 12) & 63]);
    out.push_back(rest == 2 ? kB64[(w >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

bool is_unicode_space(uint32_t cp) {
  // Unicode White_Space (PropList.txt).
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

}  // namespace moekit::data
