/* fmhub static Space: a BERT WordPiece tokenizer that gives the ids the Python (Rust `tokenizers`) one gives.
 *
 * Steps, as `BertNormalizer` + `BertPreTokenizer` + `WordPiece` + the [CLS] A [SEP] template do them:
 * special tokens typed in the text are kept whole; control characters dropped and whitespace made a space; CJK
 * ideographs spaced apart; accents stripped (NFD, nonspacing marks removed) and lower-cased when the model says so;
 * split on whitespace and around every punctuation character; each word cut greedily into the longest vocabulary
 * pieces ("##" continues a word; a word with no cut, or over 100 characters, is [UNK]); truncated to
 * `max_length` with [CLS] and [SEP] included.
 *
 * Options come from settings.json's `tokenizer` block (written by the builder from the model's tokenizer), the
 * vocabulary from tokenizer.json's `model.vocab`.
 */
"use strict";

(function () {
  const WHITESPACE = /^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]$/u;  // Unicode White_Space
  const OTHER = /^\p{C}$/u;  // control, format, unassigned, private use, surrogate
  const NONSPACING_MARK = /\p{Mn}/gu;
  const PUNCTUATION = /^[\p{P}!-/:-@[-`{-~]$/u;  // Unicode punctuation and every ASCII punctuation character
  const CJK = [[0x4e00, 0x9fff], [0x3400, 0x4dbf], [0x20000, 0x2a6df], [0x2a700, 0x2b73f], [0x2b740, 0x2b81f],
               [0x2b920, 0x2ceaf], [0xf900, 0xfaff], [0x2f800, 0x2fa1f]];

  const isWhitespace = (c) => WHITESPACE.test(c);
  const isControl = (c) => c !== "\t" && c !== "\n" && c !== "\r" && OTHER.test(c);
  const isCjk = (cp) => CJK.some(([lo, hi]) => cp >= lo && cp <= hi);

  class WordPieceTokenizer {
    /** @param {object} vocab token -> id (tokenizer.json's model.vocab)  @param {object} options settings.tokenizer */
    constructor(vocab, options) {
      this.vocab = new Map(Object.entries(vocab));
      this.options = options;
      this.prefix = options.continuing_subword_prefix ?? "##";
      this.maxWordChars = options.max_input_chars_per_word ?? 100;
      this.maxLength = options.max_length;
      this.unkId = this.id(options.unk_token);
      this.clsId = this.id(options.cls_token);
      this.sepId = this.id(options.sep_token);
      // special tokens match the raw text before normalization, longest first
      this.special = (options.special_tokens || []).filter((t) => this.vocab.has(t)).sort((a, b) => b.length - a.length);
    }

    id(token) {
      if (!this.vocab.has(token)) throw new Error(`the tokenizer's vocabulary has no ${token}`);
      return this.vocab.get(token);
    }

    normalize(text) {
      const o = this.options;
      let chars = Array.from(text);
      if (o.clean_text) {
        chars = chars.filter((c) => c !== "\0" && c !== "\ufffd" && !isControl(c)).map((c) => (isWhitespace(c) ? " " : c));
      }
      if (o.handle_chinese_chars) chars = chars.map((c) => (isCjk(c.codePointAt(0)) ? ` ${c} ` : c));
      let out = chars.join("");
      if (o.strip_accents) out = out.normalize("NFD").replace(NONSPACING_MARK, "");
      if (o.lowercase) out = Array.from(out, (c) => c.toLowerCase()).join("");  // per character, as Rust does
      return out;
    }

    /** whitespace-separated words, each punctuation character a word of its own */
    preTokenize(text) {
      const words = [];
      let word = "";
      for (const c of text) {
        if (isWhitespace(c) || PUNCTUATION.test(c)) {
          if (word) words.push(word);
          word = "";
          if (!isWhitespace(c)) words.push(c);
        } else {
          word += c;
        }
      }
      if (word) words.push(word);
      return words;
    }

    wordPieces(word, ids) {
      const chars = Array.from(word);
      if (chars.length > this.maxWordChars) {
        ids.push(this.unkId);
        return;
      }
      const pieces = [];
      for (let start = 0; start < chars.length;) {
        let end = chars.length, found = -1;
        for (; end > start; end--) {
          const piece = (start > 0 ? this.prefix : "") + chars.slice(start, end).join("");
          if (this.vocab.has(piece)) {
            found = this.vocab.get(piece);
            break;
          }
        }
        if (found < 0) {
          ids.push(this.unkId);
          return;
        }
        pieces.push(found);
        start = end;
      }
      ids.push(...pieces);
    }

    /** [CLS] ids [SEP], at most max_length ids */
    encode(text) {
      const ids = [];
      for (const part of this.splitSpecial(text)) {
        if (part.special !== undefined) {
          ids.push(part.special);
          continue;
        }
        for (const word of this.preTokenize(this.normalize(part.text))) this.wordPieces(word, ids);
      }
      return [this.clsId, ...ids.slice(0, Math.max(0, this.maxLength - 2)), this.sepId];
    }

    splitSpecial(text) {
      if (!this.special.length) return [{text}];
      const parts = [];
      let rest = text;
      while (rest) {
        let at = -1, token = null;
        for (const t of this.special) {
          const i = rest.indexOf(t);
          if (i >= 0 && (at < 0 || i < at)) [at, token] = [i, t];
        }
        if (at < 0) {
          parts.push({text: rest});
          break;
        }
        if (at > 0) parts.push({text: rest.slice(0, at)});
        parts.push({special: this.vocab.get(token)});
        rest = rest.slice(at + token.length);
      }
      return parts;
    }
  }

  window.fmhub = window.fmhub || {};
  window.fmhub.WordPieceTokenizer = WordPieceTokenizer;
})();
