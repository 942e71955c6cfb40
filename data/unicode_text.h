// Text plumbing for the tokenizer: UTF-8 validation, Unicode NFC (through ICU), the GPT-2
// byte-level alphabet that HF vocabularies spell their byte strings in, and base64 (the token
// column of .tiktoken files). Every decoder here reports where the input went wrong, so that
// file readers can name the file, line and byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moekit::data {

// Length of the longest valid UTF-8 prefix of s (== s.size() when all of s is valid). Valid
// means RFC 3629: shortest form, no surrogates, nothing above U+10FFFF.
size_t utf8_valid_prefix(std::string_view s);
inline bool utf8_valid(std::string_view s) { return utf8_valid_prefix(s) == s.size(); }

// Decodes the code point at s[i] (s valid UTF-8, i < s.size()); *len receives its byte length.
uint32_t utf8_decode_at(std::string_view s, size_t i, int* len);
// Appends the UTF-8 bytes of code point cp (<= 0x10FFFF) to out.
void utf8_append(uint32_t cp, std::string* out);

// Unicode normalization form C (ICU, the same Unicode data as the rest of the system). Returns
// false and leaves *out untouched when s is already NFC (ASCII always is, checked first);
// otherwise writes NFC(s) to *out and returns true. s must be valid UTF-8.
bool nfc_normalize(std::string_view s, std::string* out);
// True when NFC(a + b) == NFC(a) + NFC(b) for any a, whatever follows cp (ICU's
// hasBoundaryBefore): the places where a long text may be cut and normalized in pieces.
bool nfc_boundary_before(uint32_t cp);

// GPT-2's bytes_to_unicode: the 188 printable bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF)
// stand for themselves and the other 68 map to U+0100 + n in byte order. HF byte-level BPE files
// (vocab.json, merges.txt, tokenizer.json) spell every token this way.
uint32_t byte_to_unicode(uint8_t b);
// The inverse over a whole token: false (and *bad_char = the offending code point) when a
// character is outside the 256-character alphabet or s is not valid UTF-8.
bool unicode_to_bytes(std::string_view s, std::string* out, uint32_t* bad_char);
std::string bytes_to_unicode(std::string_view bytes);

// Strict base64 (RFC 4648 alphabet, '=' padding required to a multiple of 4, no whitespace).
bool base64_decode(std::string_view s, std::string* out);
std::string base64_encode(std::string_view bytes);

// True for the code points Qwen's pattern and GPT-2's treat as whitespace (\s in the Rust regex
// and Oniguruma engines: Unicode White_Space, which includes U+0085).
bool is_unicode_space(uint32_t cp);

}  // namespace moekit::data
