//! The caption tokenisation of the COCO caption metrics (pycocoevalcap): Stanford's PTBTokenizer
//! (CoreNLP 3.4.1, run with `-preserveLines -lowerCase`), then pycocoevalcap's punctuation list
//! removed. Written here so that scoring needs no Java.
//!
//! The tokenizer is a lexer: at each position every rule is tried, the longest match wins (trailing
//! context counts towards the length, as in JFlex), ties go to the earlier rule, and the rule's action
//! turns the matched text into a token (or into nothing). The rules and their order follow CoreNLP's
//! `PTBLexer` with its default options of that version, and its character classes are that lexer's
//! Unicode 6.2 tables (unicode62.rs); `tests/metrics.rs` holds the port to the real jar.
//!
//! The hand-written lexer is deliberate: no Rust crate reproduces this tokenizer, and pycocoevalcap's
//! scores depend on its every quirk.

use std::sync::OnceLock;

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};

use super::unicode62;

/// What pycocoevalcap drops from the tokenizer's output (`PTBTokenizer.PUNCTUATIONS`). The bracket
/// escapes are upper case there while the tokenizer lower-cases them, so `-lrb-` and kin stay.
const PUNCTUATIONS: &[&str] = &[
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";",
];

/// Captions tokenised as pycocoevalcap's `PTBTokenizer.tokenize` does: each caption's tokens joined by
/// single spaces, punctuation removed, one result per caption.
///
/// The captions are tokenised as one text, one caption per line, because the lexer looks past a
/// line's end (an abbreviation at the end of a caption depends on the next caption's first word);
/// line breaks other than `\n` inside a caption (`\r`, U+2028 ...) split it, and then, as in
/// pycocoevalcap, the later captions of the call shift by one line.
pub fn tokenize_captions(captions: &[&str]) -> Vec<String> {
    let text: Vec<String> = captions.iter().map(|c| c.replace('\n', " ")).collect();
    let lines = tokenize(&text.join("\n"));
    let mut lines = lines.split('\n');
    captions
        .iter()
        .map(|_| {
            let line = lines.next().unwrap_or("");
            line.trim_end()
                .split(' ')
                .filter(|w| !PUNCTUATIONS.contains(w))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The PTBTokenizer's output for `text` (`-preserveLines -lowerCase`): tokens separated by one space,
/// a line break for each line break of the input.
pub fn tokenize(text: &str) -> String {
    let lexer = lexer();
    let mut cache: Vec<Cache> = lexer.rules.iter().map(|r| r.whole.create_cache()).collect();
    let mut head_cache: Vec<Option<Cache>> = lexer
        .rules
        .iter()
        .map(|r| r.context.as_ref().map(DFA::create_cache))
        .collect();
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut line_start = true;
    let mut pos = 0;
    while pos < text.len() {
        let (rule, len) = lexer.longest(text, pos, &mut cache);
        let Some(rule) = rule else {
            // No rule covers this character (a non-BMP character, an unassigned code point...):
            // the tokenizer deletes it.
            pos += text[pos..].chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let r = &lexer.rules[rule];
        let matched = &text[pos..pos + len];
        let token_len = match (&r.context, &mut head_cache[rule]) {
            (Some(head), Some(cache)) => split_head(head, cache, matched),
            _ => len,
        };
        let (token, consumed) = r.action.apply(&text[pos..pos + token_len]);
        pos += consumed;
        match token {
            Token::None => {}
            Token::Newline => {
                out.push('\n');
                line_start = true;
            }
            Token::Text(t) => {
                if !line_start {
                    out.push(' ');
                }
                out.push_str(&t.to_lowercase());
                line_start = false;
            }
        }
    }
    out
}

/// The length of the part of `matched` (a match of `head` followed by its trailing context) that is
/// the token: the longest prefix `head` matches whole. The grammar never makes this ambiguous.
fn split_head(head: &DFA, cache: &mut Cache, matched: &str) -> usize {
    let mut best = 0;
    let input = Input::new(matched).anchored(Anchored::Yes);
    // With MatchKind::All an anchored search reports every match end; keep the last one that is
    // within `matched` and leaves a non-empty context (a context always has at least one character).
    let mut state = head.start_state_forward(cache, &input).expect("anchored start");
    for (i, &b) in matched.as_bytes().iter().enumerate() {
        state = head.next_state(cache, state, b).expect("lazy DFA cache");
        if state.is_dead() {
            break;
        }
        let eoi = head.next_eoi_state(cache, state).expect("lazy DFA cache");
        if eoi.is_match() && matched.is_char_boundary(i + 1) && i + 1 < matched.len() {
            best = i + 1;
        }
    }
    best
}

enum Token {
    None,
    Newline,
    Text(String),
}

#[derive(Clone, Copy)]
enum Action {
    /// The matched text as it is.
    AsIs,
    /// Soft hyphens (U+00AD) removed; a token of soft hyphens alone becomes "-".
    RemoveSoftHyphens,
    /// The text without its last `n` characters; those are lexed again.
    PushBack(usize),
    /// The whole text, and its last character lexed again (the period of an abbreviation that ends
    /// a sentence becomes a token of its own too).
    Reduplicate,
    /// An acronym before a sentence-starting word: a single letter gives its period back; longer
    /// acronyms keep theirs and reduplicate it.
    Acronym,
    Replace(&'static str),
    /// Spaces become U+00A0 (SGML tags, fractions).
    NbspSpaces,
    /// Ampersand entities (`&amp;`) become `&`.
    Amp,
    Quote {
        opening: bool,
    },
    Hyphens,
    Currency,
    Fraction,
    /// Spaces become U+00A0, parentheses `-LRB-`/`-RRB-` (phone numbers).
    Phone,
    /// Parentheses become `-LRB-`/`-RRB-` (smileys).
    Parens,
    /// Whitespace and ignorable characters: no token.
    Skip,
    Newline,
}

impl Action {
    /// The token for `text` (what the rule matched, context excluded), and how many bytes of input
    /// that consumed.
    fn apply(self, text: &str) -> (Token, usize) {
        let t = |s: String| Token::Text(s);
        match self {
            Action::AsIs => (t(text.into()), text.len()),
            Action::RemoveSoftHyphens => {
                let s: String = text.chars().filter(|&c| c != '\u{AD}').collect();
                (t(if s.is_empty() { "-".into() } else { s }), text.len())
            }
            Action::PushBack(n) => {
                let keep = text.char_indices().rev().nth(n - 1).map_or(0, |(i, _)| i);
                (t(text[..keep].into()), keep)
            }
            Action::Reduplicate => {
                let last = text.char_indices().next_back().map_or(0, |(i, _)| i);
                (t(text.into()), last)
            }
            Action::Acronym => {
                let last = text.char_indices().next_back().map_or(0, |(i, _)| i);
                if text.chars().count() == 2 {
                    (t(text[..last].into()), last)
                } else {
                    (t(text.into()), last)
                }
            }
            Action::Replace(s) => (t(s.into()), text.len()),
            Action::NbspSpaces => (t(text.replace(' ', "\u{A0}")), text.len()),
            Action::Amp => (t(normalize_amp(text)), text.len()),
            Action::Quote { opening } => (t(latex_quotes(text, opening)), text.len()),
            Action::Hyphens => {
                let n = text.chars().count();
                (
                    t(if (3..=4).contains(&n) { "--".into() } else { text.into() }),
                    text.len(),
                )
            }
            Action::Currency => {
                let s = match text {
                    "\u{A2}" => "cents",
                    "\u{A3}" => "#",
                    "\u{A4}" | "\u{20AC}" | "\u{20A0}" | "\u{80}" => "$",
                    other => other,
                };
                (t(s.into()), text.len())
            }
            Action::Fraction => {
                let s = match text {
                    "\u{BC}" => "1/4",
                    "\u{BD}" => "1/2",
                    "\u{BE}" => "3/4",
                    "\u{2153}" => "1/3",
                    "\u{2154}" => "2/3",
                    other => other,
                };
                (t(s.into()), text.len())
            }
            Action::Phone => (t(parens(&text.replace(' ', "\u{A0}"))), text.len()),
            Action::Parens => (t(parens(text)), text.len()),
            Action::Skip => (Token::None, text.len()),
            Action::Newline => (Token::Newline, text.len()),
        }
    }
}

fn parens(s: &str) -> String {
    s.replace('(', "-LRB-").replace(')', "-RRB-")
}

fn normalize_amp(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.len() >= 5 && tail[..5].eq_ignore_ascii_case("&amp;") {
            out.push('&');
            rest = &tail[5..];
        } else {
            out.push('&');
            rest = &tail[1..];
        }
    }
    out + rest
}

/// LaTeX-style quotes: straight quotes by the rule's guess of their side, curly ones by their shape.
fn latex_quotes(s: &str, opening: bool) -> String {
    let (single, double) = if opening { ("`", "``") } else { ("'", "''") };
    let s = replace_ci(&replace_ci(s, "&apos;", single), "&quot;", double);
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '\'' => out.push_str(single),
            '"' => out.push_str(double),
            '\u{91}' | '\u{2018}' | '\u{201B}' | '\u{2039}' => out.push('`'),
            '\u{92}' | '\u{2019}' | '\u{203A}' => out.push('\''),
            '\u{93}' | '\u{201C}' | '\u{AB}' => out.push_str("``"),
            '\u{94}' | '\u{201D}' | '\u{BB}' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out
}

/// `s` with every ASCII-case-insensitive occurrence of `from` replaced.
fn replace_ci(s: &str, from: &str, to: &str) -> String {
    let (lower, needle) = (s.to_ascii_lowercase(), from.to_ascii_lowercase());
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (i, _) in lower.match_indices(&needle) {
        out.push_str(&s[last..i]);
        out.push_str(to);
        last = i + from.len();
    }
    out + &s[last..]
}

struct Rule {
    /// The rule's pattern with its trailing context, if any: what is matched and compared.
    whole: DFA,
    /// The pattern without the trailing context, to find where the token ends.
    context: Option<DFA>,
    action: Action,
}

struct Lexer {
    rules: Vec<Rule>,
}

impl Lexer {
    /// The rule with the longest match at `pos` (the earliest on a tie) and that match's length in
    /// bytes. Lengths are compared in characters, as the lexer counts them.
    fn longest(&self, text: &str, pos: usize, caches: &mut [Cache]) -> (Option<usize>, usize) {
        let input = Input::new(text).range(pos..).anchored(Anchored::Yes);
        let (mut best, mut best_chars, mut best_len) = (None, 0, 0);
        for (i, rule) in self.rules.iter().enumerate() {
            let Ok(Some(end)) = rule.whole.try_search_fwd(&mut caches[i], &input) else {
                continue;
            };
            let len = end.offset() - pos;
            if len == 0 {
                continue;
            }
            let chars = text[pos..end.offset()].chars().count();
            if chars > best_chars {
                (best, best_chars, best_len) = (Some(i), chars, len);
            }
        }
        (best, best_len)
    }
}

fn dfa(pattern: &str) -> DFA {
    DFA::builder()
        .configure(DFA::config().match_kind(MatchKind::All).cache_capacity(8 << 20))
        .syntax(syntax::Config::new().unicode(true).utf8(true))
        .build(pattern)
        .unwrap_or_else(|e| panic!("PTB lexer pattern {pattern:?}: {e}"))
}

fn lexer() -> &'static Lexer {
    static LEXER: OnceLock<Lexer> = OnceLock::new();
    LEXER.get_or_init(|| Lexer {
        rules: rules()
            .into_iter()
            .map(|(head, context, action)| match context {
                None => Rule {
                    whole: dfa(&head),
                    context: None,
                    action,
                },
                Some(context) => Rule {
                    whole: dfa(&format!("(?:{head})(?:{context})")),
                    context: Some(dfa(&head)),
                    action,
                },
            })
            .collect(),
    })
}

/// Caseless literal text (the grammar's literals match any case; its character classes do not).
fn ci(s: &str) -> String {
    format!("(?i:{s})")
}

/// The grammar: (pattern, trailing context, action), in priority order.
fn rules() -> Vec<(String, Option<String>, Action)> {
    // Characters.
    let space = r"[ \t\u{A0}\u{2000}-\u{200A}\u{3000}]";
    let newline = r"(?:\r\n|\r|\n|\u{2028}|\u{2029}|\x0B|\x0C|\u{85})";
    let spacenl = format!("(?:{space}|{newline})");
    let spacenls = format!("(?:{spacenl})+");
    let digit = format!(r"[{}\u{{7C0}}-\u{{7C9}}]", unicode62::DIGIT.concat());
    let splet = format!("(?:&[aeiouAEIOU]{})", ci("(?:acute|grave|uml);"));
    let letter = format!(
        r"(?:[{}]|{splet}|[\u{{AD}}\u{{237}}-\u{{24F}}\u{{2C2}}-\u{{2C5}}\u{{2D2}}-\u{{2DF}}\u{{2E5}}-\u{{2FF}}\u{{300}}-\u{{36F}}\u{{370}}-\u{{37D}}\u{{384}}\u{{385}}\u{{3CF}}\u{{3F6}}\u{{3FC}}-\u{{3FF}}\u{{483}}-\u{{487}}\u{{4CF}}\u{{4F6}}-\u{{4FF}}\u{{510}}-\u{{525}}\u{{55A}}-\u{{55F}}\u{{591}}-\u{{5BD}}\u{{5BF}}\u{{5C1}}\u{{5C2}}\u{{5C4}}\u{{5C5}}\u{{5C7}}\u{{615}}-\u{{61A}}\u{{63B}}-\u{{63F}}\u{{64B}}-\u{{65E}}\u{{670}}\u{{6D6}}-\u{{6EF}}\u{{6FA}}-\u{{6FF}}\u{{70F}}\u{{711}}\u{{730}}-\u{{74F}}\u{{750}}-\u{{77F}}\u{{7A6}}-\u{{7B1}}\u{{7CA}}-\u{{7F5}}\u{{7FA}}\u{{900}}-\u{{903}}\u{{93C}}\u{{93E}}-\u{{94E}}\u{{951}}-\u{{955}}\u{{962}}-\u{{963}}\u{{981}}-\u{{983}}\u{{9BC}}-\u{{9C4}}\u{{9C7}}\u{{9C8}}\u{{9CB}}-\u{{9CD}}\u{{9D7}}\u{{9E2}}\u{{9E3}}\u{{A01}}-\u{{A03}}\u{{A3C}}\u{{A3E}}-\u{{A4F}}\u{{A81}}-\u{{A83}}\u{{ABC}}-\u{{ACF}}\u{{B82}}\u{{BBE}}-\u{{BC2}}\u{{BC6}}-\u{{BC8}}\u{{BCA}}-\u{{BCD}}\u{{C01}}-\u{{C03}}\u{{C3E}}-\u{{C56}}\u{{D3E}}-\u{{D44}}\u{{D46}}-\u{{D48}}\u{{E30}}-\u{{E3A}}\u{{E47}}-\u{{E4E}}\u{{EB1}}-\u{{EBC}}\u{{EC8}}-\u{{ECD}}])",
        unicode62::LETTER.concat()
    );
    // The grammar's [:letter:], [:digit:] and [:uppercase:]; LETTER and DIGIT add to the first two.
    let bare_letter = format!("[{}]", unicode62::LETTER.concat());
    let bare_digit = format!("[{}]", unicode62::DIGIT.concat());
    let upper = format!("[{}]", unicode62::UPPERCASE.concat());
    let hyphen = r"[-_\u{58A}\u{2010}\u{2011}]";
    let apos = format!(r"(?:['\u{{92}}\u{{2019}}]|{})", ci("&apos;"));
    let aposetc = format!(r"(?:{apos}|[`\u{{91}}\u{{2018}}\u{{201B}}])");
    let sgml = r#"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*|[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|"[^"]*")))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>"#;
    let sentend = format!("(?:{spacenl}(?:{spacenl}|{upper}|{sgml}))");

    // Tokens.
    let spmdash = format!(
        r"(?:&{}|[\u{{96}}\u{{97}}\u{{2013}}\u{{2014}}\u{{2015}}])",
        ci("(?:MD|mdash|ndash);")
    );
    let spamp = ci("&amp;");
    let sppunc = format!("(?:&{})", ci("(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"));
    let date = format!(r"(?:{digit}{{1,2}}[\-/]{digit}{{1,2}}[\-/]{digit}{{2,4}})");
    let num = format!(r"(?:{digit}+|{digit}*(?:[.:,\u{{AD}}\u{{66B}}\u{{66C}}]{digit}+)+)");
    let number = format!(r"(?:[\-+]?{num})");
    let subsupnum = r"(?:[\u{207A}\u{207B}\u{208A}\u{208B}]?(?:[\u{2070}\u{B9}\u{B2}\u{B3}\u{2074}-\u{2079}]+|[\u{2080}-\u{2089}]+))";
    let frac = format!(r"(?:(?:{digit}{{1,4}}[\- \u{{A0}}])?{digit}{{1,4}}(?:\\?/|\u{{2044}}){digit}{{1,4}})");
    let frac2 = r"[\u{BC}\u{BD}\u{BE}\u{2153}-\u{215E}]";
    let dolsign = r"(?:[A-Z]*\$|#)";
    let dolsign2 =
        r"[\u{A2}\u{A3}\u{A4}\u{A5}\u{80}\u{20A0}\u{20AC}\u{60B}\u{E3F}\u{20A4}\u{FFE0}\u{FFE1}\u{FFE5}\u{FFE6}]";
    let word = format!(r"(?:{letter}(?:{letter}|{digit})*(?:[.!?]{letter}(?:{letter}|{digit})*)*)");
    let filename_ext = ci(
        "(?:bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)",
    );
    let filename = format!(r"(?:(?:{letter}|{digit})+(?:\.(?:{letter}|{digit})+)*\.{filename_ext})");
    let alnum = format!(r"(?:{bare_letter}|{bare_digit})");
    let thing = format!(r"(?:(?:[dDoOlL]{aposetc}{alnum})?{alnum}+(?:{hyphen}(?:[dDoOlL]{aposetc}{alnum})?{alnum}+)*)");
    let thinga = format!(r"(?:[A-Z]+(?:(?:[+&]|{spamp})[A-Z]+)+)");
    let thing3 = r"(?:[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2})";
    let acro = format!(
        r"(?:[A-Za-z](?:\.[A-Za-z])*|{}|{})",
        ci(r"(?:Canada|Sino|Korean|EU|Japan|non)-U\.S"),
        ci(r"U\.S\.-(?:U\.K|U\.S\.S\.R)")
    );
    let acro2 = format!(
        r"(?:[A-Za-z](?:\.[A-Za-z])+|{}|{})",
        ci(r"(?:Canada|Sino|Korean|EU|Japan|non)-U\.S"),
        ci(r"U\.S\.-(?:U\.K|U\.S\.S\.R)")
    );
    let hthing = format!(r"(?:[A-Za-z0-9][A-Za-z0-9.,\u{{AD}}]*(?:-(?:[A-Za-z0-9\u{{AD}}]+|{acro2}\.))+)");
    let redaux = format!("(?:{apos}(?:[msdMSD]|{}))", ci("(?:re|ve|ll)"));
    let sword = r"(?:[A-Za-z\u{AD}]*[A-MO-Za-mo-z]\u{AD}*)";
    let sredaux = format!("(?:{}{aposetc}{})", ci("n"), ci("t"));
    let apoword = format!(
        r"(?:{apos}{n}{apos}?|[lLdDjJ]{apos}|{dunkin}{apos}|{somethin}{apos}|{ol}{apos}|{apos}{em}|[A-HJ-XZn]{aposetc}{bare_letter}{{2}}{bare_letter}*|{apos}[2-9]0{s}|{apos}{till}|{bare_letter}+[aeiouyAEIOUY]{aposetc}[aeiouA-Z]{bare_letter}*|{apos}{cause}|{rest}|O{aposetc}{o})",
        n = ci("n"),
        dunkin = ci("Dunkin"),
        somethin = ci("somethin"),
        ol = ci("ol"),
        em = ci("em"),
        s = ci("s"),
        till = ci("till?"),
        cause = ci("cause"),
        rest = ci(r"(?:cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)"),
        o = ci("o"),
    );
    let apoword2 = format!("(?:{}{apos})", ci("y"));
    let fullurl = format!(
        r#"(?:{}://[^ \t\n\x0C\r"<>|(){{}}]+[^ \t\n\x0C\r"<>|.!?(){{}},\-])"#,
        ci("https?")
    );
    let likelyurl = format!(
        r#"(?:(?:(?:{www}\.(?:[^ \t\n\x0C\r"<>|.!?(){{}},]+\.)+[a-zA-Z]{{2,4}})|(?:(?:[^ \t\n\x0C\r"`'<>|.!?(){{}},-_$]+\.)+{tld}))(?:/[^ \t\n\x0C\r"<>|()]+[^ \t\n\x0C\r"<>|.!?(){{}},\-])?)"#,
        www = ci("www"),
        tld = ci("(?:com|net|org|edu)")
    );
    let email = format!(
        r#"(?:(?:{lt}|<)?[a-zA-Z0-9][^ \t\n\x0C\r"<>|()\u{{A0}}{{}}]*@(?:[^ \t\n\x0C\r"<>|(){{}}.\u{{A0}}]+\.)*(?:[^ \t\n\x0C\r"<>|(){{}}.\u{{A0}}]+)(?:{gt}|>)?)"#,
        lt = ci("&lt;"),
        gt = ci("&gt;")
    );
    let twitter = format!(r"(?:@[a-zA-Z_][a-zA-Z_0-9]*|#{letter}+)");
    let abmonth = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec";
    let abdays = "Mon|Tue|Tues|Wed|Thu|Thurs|Fri";
    let abstate = format!(
        "{}|A{}|A{}|{}|D{}|{}|I{}|{}|L{}|M{}|{}|M{}|{}|O{}|P{}|{}|T{}|{}|W{}|{}",
        ci("Ala|Ariz"),
        ci("z"),
        ci("rk"),
        ci("Calif|Colo|Conn|Ct|Dak"),
        ci("el"),
        ci("Fla|Ga"),
        ci("ll"),
        ci("Ind|Kans?|Ky"),
        ci("a"),
        ci("ass"),
        ci("Md|Mich|Minn"),
        ci("iss"),
        ci("Mo|Mont|Neb|Nev|Okla"),
        ci("re"),
        ci("a"),
        ci("Penn|Tenn"),
        ci("ex"),
        ci("Va|Vt"),
        ci("ash"),
        ci("Wisc?|Wyo"),
    );
    let abcomp = ci(r"Inc|Cos?|Corp|Pp?t[yeYE]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys");
    let abnum = ci("tel|est|ext|sq");
    let abptit = ci(r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq");
    let abbrev1 = format!(
        r"(?:(?:{}|{}|{abstate}|{abcomp}|{abnum}|{abptit}|{})\.)",
        ci(abmonth),
        ci(abdays),
        ci("etc|al|seq|Bldg")
    );
    let abtitle = format!(
        "(?:{}|M{}|{})",
        ci("Mr|Mrs|Ms"),
        ci("iss"),
        ci(
            "Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc"
        )
    );
    let abcomp2 = ci("Invt|Elec|Natl|M[ftFT]g|Dept");
    let abbrev4 = format!(
        r"(?:{abtitle}|{}|{acro}|{abcomp2})",
        ci(r"vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph")
    );
    let abbrev2 = format!(r"(?:{abbrev4}\.)");
    let acronym = format!(r"(?:{acro}\.)");
    let abbrev3 = format!(r"(?:{}\.)", ci("ca|figs?|prop|nos?|art|bldg|pp|op"));
    let phone = r"(?:(?:\([0-9]{2,3}\)[ \u{A0}]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u{A0}])?[0-9]{2,4}[\- \u{A0}])[0-9]{3,4}[\- \u{A0}]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5})";
    let ldots = r"(?:\.{3,5}|(?:\.[ \u{A0}]){2,4}\.|[\u{85}\u{2026}])";
    let insentp = r"[,;:\u{3001}]";
    let quotes = format!(
        r"(?:{apos}|''|[`\u{{2018}}\u{{2019}}\u{{201A}}\u{{201B}}\u{{201C}}\u{{201D}}\u{{91}}\u{{92}}\u{{93}}\u{{94}}\u{{201E}}\u{{201F}}\u{{2039}}\u{{203A}}\u{{AB}}\u{{BB}}]{{1,2}})"
    );
    let dblquot = format!(r#"(?:"|{})"#, ci("&quot;"));
    let tbspec = format!(
        r"(?:{}|{}{apos}{}|{}{apos}{})",
        ci(r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls"),
        ci("Cap"),
        ci("n"),
        ci("c"),
        ci("est"),
    );
    let tbspec2 = format!("(?:{apos}[0-9][0-9])");
    let smiley = r"(?:[<>]?[:;=][\-o\*']?[()DPdpO\\{@|\[\]])";
    let asiansmiley = r"(?:[\^x=~<>]\.\[\^x=~<>]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\))";
    let miscsymbol = r"[+%&~\^|\\\u{A6}\u{A7}\u{A8}\u{A9}\u{AC}\u{AE}\u{AF}\u{B0}-\u{B3}\u{B4}-\u{BA}\u{D7}\u{F7}\u{387}\u{5BE}\u{5C0}\u{5C3}\u{5C6}\u{5F3}\u{5F4}\u{600}-\u{603}\u{606}-\u{60A}\u{60C}\u{614}\u{61B}\u{61E}\u{66A}\u{66D}\u{703}-\u{70D}\u{7F6}\u{7F7}\u{7F8}\u{964}\u{965}\u{E4F}\u{1FBD}\u{2016}\u{2017}\u{2020}-\u{2023}\u{2030}-\u{2038}\u{203B}\u{203E}-\u{2042}\u{2044}\u{207A}-\u{207F}\u{208A}-\u{208E}\u{2100}-\u{214F}\u{2190}-\u{21FF}\u{2200}-\u{2BFF}\u{3012}\u{30FB}\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF20}\u{FF3B}-\u{FF40}\u{FF5B}-\u{FF65}]";
    // The words after which an acronym's period also ends the sentence (capital first letter).
    let starters = [
        "About",
        "According",
        "Additionally",
        "After",
        "An",
        "A",
        "As",
        "At",
        "But",
        "Earlier",
        "He",
        "Her",
        "Here",
        "However",
        "If",
        "In",
        "It",
        "Last",
        "Many",
        "More",
        r"Mr\.",
        r"Ms\.",
        "Now",
        "Once",
        "One",
        "Other",
        "Our",
        "She",
        "Since",
        "So",
        "Some",
        "Such",
        "That",
        "The",
        "Their",
        "Then",
        "There",
        "These",
        "They",
        "This",
        "We",
        "When",
        "While",
        "What",
        "Yet",
        "You",
    ]
    .map(|w| format!("{}{}", &w[..1], ci(&w[1..])).replace("(?i:)", ""))
    .join("|");

    use Action::*;
    let r = |p: &str, a: Action| (p.to_string(), None, a);
    let c = |p: &str, ctx: &str, a: Action| (p.to_string(), Some(ctx.to_string()), a);
    vec![
        r(&ci(r"c\+\+"), AsIs),
        r(&ci("(?:c|f)#"), AsIs),
        r(&ci("cannot"), PushBack(3)),
        r(&ci("'twas"), PushBack(3)),
        r(&ci("'tis"), PushBack(2)),
        r(&ci("gonna|gotta|lemme|gimme|wanna"), PushBack(2)),
        r(sgml, NbspSpaces),
        r(&spmdash, Replace("--")),
        r(&spamp, Replace("&")),
        r(&sppunc, AsIs),
        c(&word, &redaux, RemoveSoftHyphens),
        c(sword, &sredaux, RemoveSoftHyphens),
        r(&word, RemoveSoftHyphens),
        r(&apoword, AsIs),
        c(&apoword2, &bare_letter, AsIs),
        r(&fullurl, AsIs),
        r(&likelyurl, AsIs),
        r(&email, AsIs),
        r(&twitter, AsIs),
        c(&redaux, "[^A-Za-z]", Quote { opening: false }),
        c(&sredaux, "[^A-Za-z]", Quote { opening: false }),
        r(&date, AsIs),
        r(&number, RemoveSoftHyphens),
        r(subsupnum, AsIs),
        r(&frac, NbspSpaces),
        r(frac2, Fraction),
        r(&tbspec, Amp),
        r(thing3, AsIs),
        r(dolsign, AsIs),
        r(dolsign2, Currency),
        c(&acronym, &format!("{spacenls}(?:{starters}|{sgml}){spacenl}"), Acronym),
        c(&abbrev3, &format!("{spacenl}?{digit}"), AsIs),
        c(&ci(r"(?:pt[eyEY]|co)\."), &format!("{space}{}", ci("ltd|lim")), AsIs),
        c(&abbrev1, &sentend, Reduplicate),
        c(&abbrev1, r"(?s:..)", AsIs),
        r(&abbrev1, Reduplicate),
        r(&abbrev2, AsIs),
        c(&abbrev4, space, AsIs),
        c(&acro, &spacenl, AsIs),
        c(&tbspec2, &spacenl, AsIs),
        c(&filename, &format!(r"(?:{spacenl}|[.?!,])"), AsIs),
        c(&format!(r"{word}\."), insentp, RemoveSoftHyphens),
        r(phone, Phone),
        c(&dblquot, "[A-Za-z0-9$]", Quote { opening: true }),
        r(&dblquot, Quote { opening: false }),
        r(r"\x7F", Skip),
        r(&format!("<|{}", ci("&lt;")), Replace("<")),
        r(&format!(">|{}", ci("&gt;")), Replace(">")),
        c(smiley, "[^A-Za-z0-9]", Parens),
        r(asiansmiley, Parens),
        r(r"\{", Replace("-LCB-")),
        r(r"\}", Replace("-RCB-")),
        r(r"\[", Replace("-LSB-")),
        r(r"\]", Replace("-RSB-")),
        r(r"\(", Replace("-LRB-")),
        r(r"\)", Replace("-RRB-")),
        r(r"-+", Hyphens),
        r(ldots, Replace("...")),
        r("@+|#+|_+", AsIs),
        r(r"\*+|(?:\\\*){1,3}", AsIs),
        r(insentp, AsIs),
        r("[?!]+", AsIs),
        r(
            r"[.\u{A1}\u{BF}\u{37E}\u{589}\u{61F}\u{6D4}\u{700}-\u{702}\u{7FA}\u{3002}]",
            AsIs,
        ),
        r("=", AsIs),
        r("/", AsIs),
        c(&format!(r"{hthing}\."), insentp, RemoveSoftHyphens),
        r(&hthing, RemoveSoftHyphens),
        c(&format!(r"{thing}\."), insentp, AsIs),
        r(&thing, AsIs),
        c(&format!(r"{thinga}\."), insentp, Amp),
        r(&thinga, Amp),
        c("'", r"[A-Za-z][^ \t\n\r\u{A0}]", Quote { opening: true }),
        r(&redaux, Quote { opening: false }),
        r(&sredaux, Quote { opening: false }),
        r(&quotes, Quote { opening: false }),
        r("<<|>>", AsIs),
        r(miscsymbol, AsIs),
        r(
            &format!(r"\x00|{space}+|[\u{{200B}}\u{{200E}}\u{{200F}}\u{{FEFF}}]"),
            Skip,
        ),
        r(newline, Newline),
        r(&ci("&nbsp;"), Skip),
    ]
}
