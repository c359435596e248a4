//! TSIG keys from BIND key files, as `tsig-keygen` writes them:
//!
//! ```text
//! key "failoverd-update" {
//!     algorithm hmac-sha256;
//!     secret "base64...";
//! };
//! ```
//!
//! Read when the config is loaded, so a missing or unusable key file fails
//! `failoverd check` rather than the first DNS update. Only the HMAC-SHA2
//! algorithms are accepted (RFC 8945 recommends them; HMAC-MD5 is obsolete).

use std::fmt;
use std::path::Path;

use base64::Engine as _;

/// A TSIG algorithm failoverd signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl TsigAlgorithm {
    /// The name BIND and RFC 8945 use.
    pub fn as_str(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    fn parse(name: &str) -> Result<TsigAlgorithm, String> {
        match name.to_ascii_lowercase().trim_end_matches('.') {
            "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
            "hmac-sha384" => Ok(TsigAlgorithm::HmacSha384),
            "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
            _ => Err(format!(
                "unsupported algorithm \"{name}\" (use hmac-sha256, hmac-sha384 or hmac-sha512)"
            )),
        }
    }
}

/// A TSIG key: its name, algorithm and secret. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// The key name as the server knows it (`key "NAME" { ... }`).
    pub name: String,
    pub algorithm: TsigAlgorithm,
    pub secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"***")
            .finish()
    }
}

/// Read a BIND key file. The error says what is wrong, without the path
/// (the caller names the key and the file).
pub fn load_key_file(path: &Path) -> Result<TsigKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_key(&text)
}

/// Parse the text of a BIND key file; the first `key` statement is used.
pub fn parse_key(text: &str) -> Result<TsigKey, String> {
    let tokens = tokenize(text)?;
    let mut it = tokens.iter().map(String::as_str);
    match it.next() {
        Some("key") => {}
        Some(other) => return Err(format!("expected a \"key\" statement, found \"{other}\"")),
        None => return Err("empty key file (expected tsig-keygen output)".to_string()),
    }
    let name = match it.next() {
        Some("{") | None => return Err("the key statement has no name".to_string()),
        Some(name) => name.trim_end_matches('.').to_string(),
    };
    if name.is_empty() {
        return Err("the key name is empty".to_string());
    }
    if it.next() != Some("{") {
        return Err(format!("key \"{name}\": expected \"{{\" after the name"));
    }
    let (mut algorithm, mut secret) = (None, None);
    loop {
        match it.next() {
            Some("}") => break,
            Some("algorithm") => algorithm = Some(value(&mut it, &name, "algorithm")?),
            Some("secret") => secret = Some(value(&mut it, &name, "secret")?),
            Some(other) => return Err(format!("key \"{name}\": unknown clause \"{other}\"")),
            None => return Err(format!("key \"{name}\": missing \"}}\"")),
        }
    }
    let algorithm =
        TsigAlgorithm::parse(&algorithm.ok_or_else(|| format!("key \"{name}\": no algorithm"))?)
            .map_err(|e| format!("key \"{name}\": {e}"))?;
    let secret = secret.ok_or_else(|| format!("key \"{name}\": no secret"))?;
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret.as_bytes())
        .map_err(|e| format!("key \"{name}\": secret is not valid base64: {e}"))?;
    if secret.is_empty() {
        return Err(format!("key \"{name}\": the secret is empty"));
    }
    Ok(TsigKey {
        name,
        algorithm,
        secret,
    })
}

/// `VALUE ;` after a clause keyword.
fn value<'a>(
    it: &mut impl Iterator<Item = &'a str>,
    key: &str,
    clause: &str,
) -> Result<String, String> {
    let v = match it.next() {
        Some(";") | Some("}") | None => {
            return Err(format!("key \"{key}\": {clause} has no value"));
        }
        Some(v) => v.to_string(),
    };
    if it.next() != Some(";") {
        return Err(format!("key \"{key}\": expected \";\" after {clause}"));
    }
    Ok(v)
}

/// Words, quoted strings (unquoted) and the punctuation `{ } ;`; comments
/// (`#`, `//`, `/* */`) are skipped.
fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => skip_line(&mut chars),
            '/' if chars.peek() == Some(&'/') => skip_line(&mut chars),
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                loop {
                    match chars.next() {
                        Some('/') if last == '*' => break,
                        Some(c) => last = c,
                        None => return Err("unterminated /* comment".to_string()),
                    }
                }
            }
            '{' | '}' | ';' => tokens.push(c.to_string()),
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => s.push(c),
                        None => return Err("unterminated quoted string".to_string()),
                    }
                }
                tokens.push(s);
            }
            c => {
                let mut s = c.to_string();
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                tokens.push(s);
            }
        }
    }
    Ok(tokens)
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if c == '\n' {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tsig_keygen_output() {
        let text = "key \"failoverd-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LXNlY3JldA==\";\n};\n";
        let key = parse_key(text).unwrap();
        assert_eq!(key.name, "failoverd-update");
        assert_eq!(key.algorithm, TsigAlgorithm::HmacSha256);
        assert_eq!(key.secret, b"secret-secret");
        assert!(!format!("{key:?}").contains("c2Vj"));
        assert!(format!("{key:?}").contains("***"));
    }

    #[test]
    fn key_file_errors_say_what_is_wrong() {
        let cases = [
            ("", "empty key file"),
            ("zone \"x\" {};", "expected a \"key\" statement"),
            ("key \"k\" { secret \"c2U=\"; };", "key \"k\": no algorithm"),
            (
                "key \"k\" { algorithm hmac-sha256; };",
                "key \"k\": no secret",
            ),
            (
                "key \"k\" { algorithm hmac-md5; secret \"c2U=\"; };",
                "unsupported algorithm \"hmac-md5\" (use hmac-sha256, hmac-sha384 or hmac-sha512)",
            ),
            (
                "key \"k\" { algorithm hmac-sha512; secret \"***\"; };",
                "not valid base64",
            ),
            (
                "key \"k\" { algorithm hmac-sha512 secret \"c2U=\"; };",
                "expected \";\"",
            ),
            (
                "key \"k\" { algorithm hmac-sha512; secret \"c2U=\";",
                "missing \"}\"",
            ),
            ("/* unterminated", "unterminated"),
        ];
        for (text, want) in cases {
            let err = parse_key(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn comments_and_unquoted_names_are_accepted() {
        let text = "# made by tsig-keygen\n// another\n/* block */ key upd. {\n algorithm HMAC-SHA512; secret \"c2U=\"; };";
        let key = parse_key(text).unwrap();
        assert_eq!(key.name, "upd");
        assert_eq!(key.algorithm, TsigAlgorithm::HmacSha512);
    }
}
