//! TSIG keys from BIND key files, the format `tsig-keygen` writes:
//! `key "name" { algorithm hmac-sha256; secret "base64"; };`. Parses the
//! file and checks it; it never sends anything. The error strings say what
//! is wrong without naming the file, so that config validation can put the
//! file and the key in front of them.

use std::fmt;
use std::path::Path;

use data_encoding::BASE64;
use hickory_proto::rr::Name;

/// The HMAC algorithms failoverd signs updates with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl KeyAlgorithm {
    /// The name as BIND spells it (`hmac-sha256`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::HmacSha256 => "hmac-sha256",
            KeyAlgorithm::HmacSha384 => "hmac-sha384",
            KeyAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    fn parse(text: &str) -> Result<KeyAlgorithm, String> {
        match text.to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(KeyAlgorithm::HmacSha256),
            "hmac-sha384" => Ok(KeyAlgorithm::HmacSha384),
            "hmac-sha512" => Ok(KeyAlgorithm::HmacSha512),
            _ => Err(format!(
                "unsupported algorithm \"{text}\" (use hmac-sha256, hmac-sha384 or hmac-sha512)"
            )),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A TSIG key: its name (as the server knows it), algorithm and secret.
/// `Debug` prints the secret as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    name: String,
    algorithm: KeyAlgorithm,
    secret: Vec<u8>,
}

impl TsigKey {
    /// A key from its parts; the name must be a valid DNS name and the
    /// secret not empty.
    pub fn new(name: &str, algorithm: KeyAlgorithm, secret: Vec<u8>) -> Result<TsigKey, String> {
        let name = name.trim_end_matches('.');
        if name.is_empty() {
            return Err("empty key name".to_string());
        }
        if let Err(err) = Name::from_ascii(name) {
            return Err(format!(
                "key name \"{name}\" is not a valid DNS name: {err}"
            ));
        }
        if secret.is_empty() {
            return Err(format!("key \"{name}\": empty secret"));
        }
        Ok(TsigKey {
            name: name.to_string(),
            algorithm,
            secret,
        })
    }

    /// The key name, without a trailing dot (`update-key`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &format_args!("***"))
            .finish()
    }
}

/// Read and parse a BIND key file (`tsig-keygen -a hmac-sha256 NAME`
/// output). Errors: "cannot read: ...", "no key statement ...", "key
/// \"k\": no secret", "unsupported algorithm \"hmac-md5\" (use ...)".
pub fn load_key_file(path: &Path) -> Result<TsigKey, String> {
    let text = super::read_small_file(path, super::SECRET_FILE_MAX_BYTES).map_err(|err| {
        let reason = match err.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            std::io::ErrorKind::InvalidData => "not a text file".to_string(),
            std::io::ErrorKind::IsADirectory => "is a directory".to_string(),
            _ => err.to_string(),
        };
        format!("cannot read: {reason}")
    })?;
    parse_key(&text)
}

/// Parse the text of a BIND key file: exactly one `key` statement, with
/// `#`, `//` and `/* */` comments allowed.
pub fn parse_key(text: &str) -> Result<TsigKey, String> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, at: 0 };
    let mut keys = Vec::new();
    while let Some(token) = parser.next() {
        match &token.kind {
            Kind::Word(word) if word.eq_ignore_ascii_case("key") => keys.push(parser.key()?),
            _ => {
                return Err(format!(
                    "line {}: unexpected {} (a key file holds one statement: key \"name\" {{ algorithm ...; secret \"...\"; }};)",
                    token.line,
                    token.kind.describe()
                ));
            }
        }
    }
    match keys.len() {
        0 => Err(
            "no key statement (expected the output of tsig-keygen: key \"name\" { algorithm hmac-sha256; secret \"...\"; };)"
                .to_string(),
        ),
        1 => Ok(keys.remove(0)),
        n => Err(format!(
            "{n} key statements; keep one key per file"
        )),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Word(String),
    Quoted(String),
    Open,
    Close,
    Semicolon,
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::Word(word) => format!("\"{word}\""),
            Kind::Quoted(text) => format!("string \"{text}\""),
            Kind::Open => "\"{\"".to_string(),
            Kind::Close => "\"}\"".to_string(),
            Kind::Semicolon => "\";\"".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    line: usize,
}

/// Split named.conf syntax into words, quoted strings and `{ } ;`.
fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => skip_line(&mut chars, &mut line),
            '/' if chars.peek() == Some(&'/') => skip_line(&mut chars, &mut line),
            '/' if chars.peek() == Some(&'*') => {
                let start = line;
                chars.next();
                let mut prev = ' ';
                loop {
                    match chars.next() {
                        Some('/') if prev == '*' => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            prev = c;
                        }
                        None => return Err(format!("line {start}: unterminated /* comment")),
                    }
                }
            }
            '"' => {
                let start = line;
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(escaped) => value.push(escaped),
                            None => return Err(format!("line {start}: unterminated string")),
                        },
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            value.push(c);
                        }
                        None => return Err(format!("line {start}: unterminated string")),
                    }
                }
                tokens.push(Token {
                    kind: Kind::Quoted(value),
                    line: start,
                });
            }
            '{' | '}' | ';' => tokens.push(Token {
                kind: match c {
                    '{' => Kind::Open,
                    '}' => Kind::Close,
                    _ => Kind::Semicolon,
                },
                line,
            }),
            c => {
                let mut word = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || matches!(next, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                tokens.push(Token {
                    kind: Kind::Word(word),
                    line,
                });
            }
        }
    }
    Ok(tokens)
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut usize) {
    for c in chars.by_ref() {
        if c == '\n' {
            *line += 1;
            break;
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn last_line(&self) -> usize {
        self.tokens.last().map_or(1, |t| t.line)
    }

    /// A word or a quoted string.
    fn value(&mut self, what: &str) -> Result<String, String> {
        match self.next() {
            Some(Token {
                kind: Kind::Word(v) | Kind::Quoted(v),
                ..
            }) => Ok(v),
            Some(token) => Err(format!(
                "line {}: expected {what}, found {}",
                token.line,
                token.kind.describe()
            )),
            None => Err(format!(
                "line {}: expected {what}, found the end of the file",
                self.last_line()
            )),
        }
    }

    fn expect(&mut self, want: Kind, context: &str) -> Result<(), String> {
        match self.next() {
            Some(token) if token.kind == want => Ok(()),
            Some(token) => Err(format!(
                "line {}: {context}: expected {}, found {}",
                token.line,
                want.describe(),
                token.kind.describe()
            )),
            None => Err(format!(
                "line {}: {context}: expected {}, found the end of the file",
                self.last_line(),
                want.describe()
            )),
        }
    }

    /// The rest of `key NAME { ... };` after the word `key`.
    fn key(&mut self) -> Result<TsigKey, String> {
        let name = self.value("a key name after \"key\"")?;
        let context = format!("key \"{name}\"");
        self.expect(Kind::Open, &context)?;
        let mut algorithm = None;
        let mut secret = None;
        loop {
            let token = self
                .next()
                .ok_or_else(|| format!("line {}: {context}: missing \"}};\"", self.last_line()))?;
            let option = match token.kind {
                Kind::Close => break,
                Kind::Word(word) => word.to_ascii_lowercase(),
                other => {
                    return Err(format!(
                        "line {}: {context}: unexpected {}",
                        token.line,
                        other.describe()
                    ));
                }
            };
            let slot = match option.as_str() {
                "algorithm" => &mut algorithm,
                "secret" => &mut secret,
                _ => {
                    return Err(format!(
                        "line {}: {context}: unknown option \"{option}\" (a key has algorithm and secret)",
                        token.line
                    ));
                }
            };
            let value = self.value(&format!("a value after \"{option}\""))?;
            self.expect(Kind::Semicolon, &context)?;
            if slot.replace(value).is_some() {
                return Err(format!(
                    "line {}: {context}: {option} given twice",
                    token.line
                ));
            }
        }
        self.expect(Kind::Semicolon, &context)?;

        let algorithm = algorithm.ok_or_else(|| format!("{context}: no algorithm"))?;
        let algorithm = KeyAlgorithm::parse(&algorithm).map_err(|e| format!("{context}: {e}"))?;
        let secret = secret.ok_or_else(|| format!("{context}: no secret"))?;
        let compact: String = secret.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.is_empty() {
            return Err(format!("{context}: empty secret"));
        }
        let secret = BASE64
            .decode(compact.as_bytes())
            .map_err(|err| format!("{context}: secret is not valid base64 ({err})"))?;
        TsigKey::new(&name, algorithm, secret)
    }
}
