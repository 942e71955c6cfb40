#!/usr/bin/env python3
"""Build the tokenizer test corpus from text a Debian machine already has, plus edge cases.

Sources, in this order, each with a byte budget (every file is read in sorted path order, so a
machine gives the same corpus every time): licences and package copyright files (English prose),
C headers and Python modules (source code), message catalogues of every language under
/usr/share/locale (msgstr strings of the .mo files: CJK, Cyrillic, Arabic, Indic, ...), translated
manual pages, the X11 Compose table (symbols), and generated edge cases (CJK, emoji sequences,
combining marks in decomposed form, long whitespace runs, digits of several scripts, special-token
strings inside text). Files that are not valid UTF-8 are skipped. Documents are capped at 64 KiB
(longer texts are cut at line ends). Output: JSON lines {"text": ..., "source": ...}.
Standard library only.
  build_corpus.py OUT.jsonl [--mb 4]
"""
import argparse
import glob
import gzip
import json
import os
import struct
import sys

DOC_CAP = 64 * 1024


def read_text(path):
    try:
        with open(path, "rb") as f:
            raw = f.read(4 << 20)
        if path.endswith(".gz"):
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None
    return text if text.strip() and "\x00" not in text else None


def mo_strings(path):
    """msgstr values of a GNU .mo catalogue (format: gettext manual, 'The Format of MO Files')."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        magic = struct.unpack("<I", data[:4])[0]
        end = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
        if end is None:
            return []
        n, _, trans_at = struct.unpack(end + "III", data[8:20])
        out = []
        for i in range(n):
            length, off = struct.unpack(end + "II", data[trans_at + 8 * i:trans_at + 8 * i + 8])
            s = data[off:off + length].decode("utf-8")
            if s and not s.startswith("Project-Id-Version"):
                out.append(s.replace("\x00", "\n"))
        return out
    except (OSError, struct.error, UnicodeDecodeError):
        return []


def cut(text, cap=DOC_CAP):
    """Split text at line ends into pieces of at most `cap` characters."""
    while len(text) > cap:
        at = text.rfind("\n", 0, cap)
        at = cap if at <= 0 else at + 1
        yield text[:at]
        text = text[at:]
    if text:
        yield text


class Corpus:
    def __init__(self):
        self.docs = []
        self.bytes_by_source = {}

    def add(self, source, text, budget):
        used = self.bytes_by_source.get(source, 0)
        for piece in cut(text):
            if used >= budget:
                return False
            b = len(piece.encode("utf-8"))
            self.docs.append({"text": piece, "source": source})
            used += b
        self.bytes_by_source[source] = used
        return used < budget

    def add_files(self, source, paths, budget, per_file=DOC_CAP):
        for p in paths:
            t = read_text(p)
            if t is not None and not self.add(source, t[:per_file], budget):
                return


def edge_cases():
    """Strings that exercise every branch of Qwen's pattern and the byte-level BPE."""
    cjk = "北京是中国的首都。東京は日本の首都です。서울은 한국의 수도입니다。《红楼梦》第一回：甄士隐梦幻识通灵，贾雨村风尘怀闺秀。"
    emoji = "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪🇯🇵 ❤️‍🔥 🧑🏿‍💻 😀😃😄 1️⃣ #️⃣ ©️ 🫠"
    combining = ("e\u0301 a\u0308\u0304 n\u0303o\u0302 A\u030a Å \u1100\u1161\u11a8 \u0915\u094d\u0937 "
                 "Z\u0351\u0352\u0353a\u035b\u035cl\u0361g\u0362o ı\u0307 \u0301leading-mark")
    digits = ("1234567890 3.14159 1,000,000 ٠١٢٣٤٥٦٧٨٩ ۱۲۳ १२३४ ১২৩ １２３ ²³¹ ½¾ Ⅻ ⅷ 〇一二三 𝟙𝟚𝟛 "
              + "9" * 300)
    spaces = ["a" + " " * n + "b" for n in (1, 2, 3, 7, 64, 1000)]
    spaces += [" " * 5000, "\t\t\t x", "\n\n\n\nx", "x \r\n\r\n y", "x\u00a0\u00a0y", "x\u3000y",
               "x\u0085y \u0085\u0085 z", "x\u2028y\u2029z", " \n \n \t\n", "end with spaces   ",
               "end with newline\n", "\r\r\r", "\u200b zero\u200bwidth \ufeffbom"]
    specials = ["<|endoftext|>", "Hello<|endoftext|>world", "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
                "<|endoftext", "|endoftext|>", "<|extra_0|><|extra_204|><|extra_205|>", "<<|endoftext|>>",
                "x<|im_end|><|im_end|>y", "<|fim_prefix|> <|unknown|>"]
    contractions = ["I'm we'LL you'Re it'S don'T they've He'd O'NEIL 'ſ 'K rock'n'roll ''s", "DON'T WON'T can't"]
    mixed = ["Hello world", " Hello world", "hello   world\t\tfoo\n\nbar", "camelCaseWordsAndXMLHttpRequest",
             "e-mail: user@example.org https://www.debian.org/doc/?q=1&lang=en#top",
             "def f(x):\n    return x**2  # square\n", "int main(void) { return 0; }\r\n",
             "Ünïcödé ÀÉÎÕÜ ß ẞ ﬁ ﬂ Ǆ ǅ ǆ", "Ελληνικά Русский язык עברית العربية हिन्दी ไทย ქართული አማርኛ",
             "a" * 3000, "=" * 2000, "!?" * 500, "\x01\x02\x1b[0m\x7f", "😀" * 300, "字" * 2000,
             "tab\tsep\tvalues\t1\t2\t3", "...---...", "'''\"\"\"```", "x" + "\u0301" * 50]
    out = [cjk, emoji, combining, digits] + spaces + specials + contractions + mixed
    out.append("\n".join(out))  # all of them in one document as well
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--mb", type=float, default=4.0, help="approximate size in MB")
    a = ap.parse_args()
    mb = int(a.mb * 1e6)
    c = Corpus()
    c.add_files("licenses", sorted(glob.glob("/usr/share/common-licenses/*")), 0.08 * mb)
    c.add_files("copyright", sorted(glob.glob("/usr/share/doc/*/copyright")), 0.12 * mb, 16 * 1024)
    c.add_files("c-headers", sorted(glob.glob("/usr/include/*.h")), 0.1 * mb, 24 * 1024)
    c.add_files("python", sorted(glob.glob("/usr/lib/python3*/*.py")), 0.1 * mb, 24 * 1024)
    # Message catalogues: one document per language (its catalogues in name order), capped so that
    # every language gets a share.
    langs = sorted(d for d in os.listdir("/usr/share/locale") if os.path.isdir(f"/usr/share/locale/{d}/LC_MESSAGES")) \
        if os.path.isdir("/usr/share/locale") else []
    per_lang = max(4096, int(0.45 * mb / max(1, len(langs))))
    for lang in langs:
        strings = []
        for mo in sorted(glob.glob(f"/usr/share/locale/{lang}/LC_MESSAGES/*.mo")):
            strings += mo_strings(mo)
            if sum(len(s) for s in strings) > per_lang:
                break
        text = "\n".join(strings)
        if text:
            c.add(f"locale", text.encode("utf-8")[:per_lang].decode("utf-8", "ignore"), 0.45 * mb)
    man_langs = sorted(d for d in os.listdir("/usr/share/man") if len(d) <= 5 and not d.startswith("man")) \
        if os.path.isdir("/usr/share/man") else []
    for lang in man_langs:
        pages = sorted(glob.glob(f"/usr/share/man/{lang}/man*/*.gz"))[:3]
        c.add_files("man-" + lang, pages, 0.1 * mb / max(1, len(man_langs)), 16 * 1024)
    c.add_files("compose", ["/usr/share/X11/locale/en_US.UTF-8/Compose"], 0.05 * mb)
    for t in edge_cases():
        c.docs.append({"text": t, "source": "edge"})
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w", encoding="utf-8") as f:
        for d in c.docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    os.replace(a.out + ".tmp", a.out)
    total = sum(len(d["text"].encode("utf-8")) for d in c.docs)
    non_ascii = sum(sum(1 for ch in d["text"] if ord(ch) > 127) for d in c.docs)
    summary = {"documents": len(c.docs), "bytes": total, "non_ascii_chars": non_ascii,
               "languages": len(langs), "bytes_by_source": {k: int(v) for k, v in sorted(c.bytes_by_source.items())
                                                            if not k.startswith("man-")},
               "man_bytes": int(sum(v for k, v in c.bytes_by_source.items() if k.startswith("man-")))}
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
