//! Config text for fuzzing, built from bytes: a TOML file made of the keys
//! failoverd knows, each set to a valid, a boundary or a wrong value
//! (huge, zero, negative, wrong type, unicode, long), sometimes with an
//! unknown key or a garbage line, and then, sometimes, mutated byte by
//! byte. The same bytes always give the same text, so libFuzzer can steer
//! it and a seed reproduces a case.
//!
//! Shared by `tests/fuzz_config.rs` and the cargo-fuzz targets in `fuzz/`
//! (which include this file by path): it depends on `arbitrary` and std
//! only, and never names a path outside [`Fixtures`].

use std::path::PathBuf;

use arbitrary::{Result, Unstructured};

/// Files a config may name (password and TSIG key files): real files in
/// a temp dir, so validation gets past "cannot read" to the contents.
pub struct Fixtures {
    pub dir: PathBuf,
    /// A one-line password file.
    pub password: PathBuf,
    /// TSIG key files: valid ones of each algorithm, then broken ones.
    pub keys: Vec<PathBuf>,
}

impl Fixtures {
    /// Write the fixture files into `dir`, created if need be; the
    /// directory is removed when the value is dropped.
    pub fn create_in(dir: PathBuf) -> std::io::Result<Fixtures> {
        std::fs::create_dir_all(&dir)?;
        let password = dir.join("password");
        std::fs::write(&password, "s3cret\nsecond line\n")?;
        let key_texts = [
            "key \"upd\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LXNlY3JldA==\";\n};\n",
            "key upd. { algorithm hmac-sha384; secret \"c2VjcmV0\"; };",
            "# comment\nkey \"k\" { algorithm hmac-sha512; secret \"AAAA\"; };",
            "key \"upd\" { algorithm hmac-md5; secret \"c2VjcmV0\"; };",
            "key \"upd\" { algorithm hmac-sha256; secret \"not base64!\"; };",
            "key \"upd\" { algorithm hmac-sha256; secret \"\"; };",
            "key { };",
            "/* unterminated",
            "",
        ];
        let mut keys = Vec::new();
        for (i, text) in key_texts.iter().enumerate() {
            let path = dir.join(format!("key{i}"));
            std::fs::write(&path, text)?;
            keys.push(path);
        }
        Ok(Fixtures {
            dir,
            password,
            keys,
        })
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The setting keys of `[defaults]` and `[[service]]`, with their kind.
/// `check_interval`/`check_timeout` and `check_send`/`check_expect` are
/// set by rules of their own (see [`Gen::settings`]).
const SETTINGS: &[(&str, Kind)] = &[
    ("connect_timeout", Kind::Positive),
    ("idle_timeout", Kind::Duration),
    ("check_interval", Kind::Positive),
    ("check_timeout", Kind::Positive),
    ("fall", Kind::AtLeastOne),
    ("rise", Kind::AtLeastOne),
    ("passive_errors", Kind::Count),
    ("failback", Kind::OneOf(&["auto", "manual"])),
    ("failback_delay", Kind::Duration),
    ("on_switch", Kind::OneOf(&["close", "keep"])),
    ("max_connections", Kind::MaxConnections),
    ("zero_copy", Kind::Bool),
    ("check_send", Kind::Text),
    ("check_expect", Kind::Text),
    ("notify", Kind::Command),
    ("check", Kind::OneOf(&["tcp", "http", "redis", "postgres"])),
    ("check_port", Kind::Port),
    ("check_path", Kind::HttpPath),
    ("check_user", Kind::Text),
    ("check_database", Kind::Text),
    ("check_password_file", Kind::File),
    ("hold_timeout", Kind::Duration),
    ("send_proxy", Kind::OneOf(&["off", "v1", "v2"])),
    ("accept_proxy", Kind::Bool),
    ("allow", Kind::Allow),
];

/// What a key holds, which decides the values tried for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A duration; "0s" is allowed.
    Duration,
    /// A duration greater than 0.
    Positive,
    /// A duration of at least 1 s.
    Ttl,
    Count,
    AtLeastOne,
    MaxConnections,
    Port,
    Bool,
    Text,
    /// A non-empty text (`admin.socket`).
    Socket,
    HttpPath,
    File,
    KeyFile,
    Command,
    Allow,
    /// An `ip:port` address (`admin.metrics`).
    Listen,
    /// An `ip:port` address with a port (`dns.server`).
    DnsServer,
    Address,
    Ip,
    Url,
    Name,
    DnsName,
    OneOf(&'static [&'static str]),
}

/// Valid durations: zero, under a second, and at least a second.
const ZERO_DURATIONS: &[&str] = &["0s", "0ms", "0.0h"];
const SHORT_DURATIONS: &[&str] = &["1ms", "250ms", "500ms", "0.5s", "0.000000001s", "999ms"];
const LONG_DURATIONS: &[&str] = &[
    "1s",
    "1.5s",
    "2s",
    "1m",
    "1h",
    "1.999999999s",
    "8760h",
    "525600m",
    "31536000s",
    "31536000000ms",
    "8759.999999999h",
];

const INVALID_DURATIONS: &[&str] = &[
    "8761h",
    "525601m",
    "31536000.000000001s",
    "31536001s",
    "2600000000000000h",
    "18446744073709551615s",
    "18446744073709551616s",
    "340282366920938463463374607431768211455h",
    "99999999999999999999999999999999999999999h",
    "0.0000000001s",
    "-1s",
    "-0s",
    "1",
    "s",
    "",
    " 1s",
    "1s ",
    "1S",
    "1 s",
    "1e3ms",
    "1.s",
    ".5s",
    "1..5s",
    "1.5.5s",
    "1d",
    "1us",
    "1ns",
    "١s",
    "1ｓ",
    "∞",
    "NaN",
    "inf",
];

const STRINGS: &[&str] = &[
    "",
    "a",
    "PING\r\n",
    "PONG",
    "+PONG",
    "fuzz",
    "\0",
    "\u{7f}",
    "ünïcode ✓",
    "\u{202e}rtl",
    "\u{FEFF}bom",
    "quote\"s",
    "back\\slash",
    "new\nline",
    "tab\t",
    "🦀",
    "'single'",
];

const VALID_PATHS: &[&str] = &["/", "/primary", "/health?x=1", "//", "/ünï", "/a%20b"];
const INVALID_PATHS: &[&str] = &["no-slash", "", "/with space", "/\u{7f}", "/a\tb", " /"];

const VALID_LISTENS: &[&str] = &["127.0.0.1:0", "127.0.0.1:9898", "[::1]:0", "0.0.0.0:0"];
const INVALID_LISTENS: &[&str] = &[
    "127.0.0.1:65536",
    "127.0.0.1:-1",
    "::1:5432",
    "[::1]",
    "[::1",
    "127.0.0.1",
    "127.0.0.1:",
    ":80",
    "localhost:80",
    "999.0.0.1:80",
    "[fe80::1%lo]:80",
    "",
];

const VALID_ADDRESSES: &[&str] = &[
    "127.0.0.1:1",
    "127.0.0.1:5432",
    "127.0.0.1:65535",
    "[::1]:5432",
    "10.0.0.11:5432",
];
const HOST_ADDRESSES: &[&str] = &[
    "localhost:80",
    "db.example.com:5432",
    "db-1.internal:6379",
    "x--y.example:80",
];
const INVALID_ADDRESSES: &[&str] = &[
    "_srv.example:80",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "::1:5432",
    "-bad.example:80",
    "a..b:80",
    "host",
    "host:",
    "host:port",
    ":80",
    "ünïcode.example:80",
    "[::1",
    "1.2.3.4.5:80",
    "",
];

const VALID_IPS: &[&str] = &["203.0.113.12", "127.0.0.1", "::1", "2001:db8::1", "0.0.0.0"];
const INVALID_IPS: &[&str] = &["256.0.0.1", "garbage", "", "[::1]", "1.2.3.4:80"];

const VALID_ALLOW: &[&str] = &[
    "10.0.0.0/8",
    "127.0.0.1",
    "127.0.0.0/8",
    "::1",
    "2001:db8::/32",
    "0.0.0.0/0",
    "::/0",
    "10.1.2.3/8",
];
const INVALID_ALLOW: &[&str] = &[
    "10.0.0.0/33",
    "10.0.0.0/-1",
    "::/129",
    "garbage",
    "",
    "/8",
    "10.0.0.0/",
    "127.0.0.1/32/32",
];

const VALID_URLS: &[&str] = &[
    "http://127.0.0.1:2379",
    "https://10.0.0.21:2379",
    "http://etcd:2379",
    "http://[::1]:2379",
];
const INVALID_URLS: &[&str] = &[
    "127.0.0.1:2379",
    "ftp://127.0.0.1:2379",
    "http://",
    "http://:2379",
    "http://[::1",
    "",
];

const VALID_NAMES: &[&str] = &["db", "web", "a.b-c_d", "px1", "-", "."];
const INVALID_NAMES: &[&str] = &["", " ", "db space", "ünï", "a/b", "name\"quote"];

const INVALID_DNS_NAMES: &[&str] = &[
    "example.com",
    ".",
    "",
    "db..example.com.",
    "other.org.",
    "ünï.example.com.",
];

/// Up to this many services, backends per service, keys per table.
const MAX_SERVICES: u32 = 4;
const MAX_BACKENDS: u32 = 4;
const MAX_KEYS: u32 = 8;

/// Build one config text from `u`. Half of the cases are *tame*: every
/// value valid and every rule across keys kept, so that the run gets
/// started configs with extreme but valid values; the other half are
/// *wild*: any value may be wrong, keys may be unknown, and the text may
/// be mutated byte by byte afterwards.
pub fn config_text(u: &mut Unstructured<'_>, fixtures: &Fixtures) -> Result<String> {
    let tame = u.arbitrary::<bool>()?;
    let check = *u.choose(&["tcp", "tcp", "http", "redis", "postgres"])?;
    let mut g = Gen {
        u,
        fixtures,
        tame,
        check,
        out: String::new(),
    };
    g.config()?;
    let text = std::mem::take(&mut g.out);
    if !tame && g.u.ratio(1, 3)? {
        mutate(g.u, text.into_bytes())
    } else {
        Ok(text)
    }
}

struct Gen<'a, 'b> {
    u: &'a mut Unstructured<'b>,
    fixtures: &'a Fixtures,
    /// Only valid values (see [`config_text`]).
    tame: bool,
    /// The check kind of every table of a tame case (`check_send` and
    /// `check_expect` only go with "tcp").
    check: &'static str,
    out: String,
}

impl Gen<'_, '_> {
    fn config(&mut self) -> Result<()> {
        if self.u.ratio(1, 3)? {
            self.line("[admin]");
            let admin = [
                ("metrics", Kind::Listen),
                ("socket", Kind::Socket),
                ("shutdown_timeout", Kind::Duration),
            ];
            self.table(&admin)?;
        }
        if self.u.ratio(1, 2)? {
            self.line("[defaults]");
            self.settings()?;
        }
        if self.u.ratio(1, 8)? {
            self.line("[cluster]");
            self.key_value("etcd", Kind::Url)?;
            let cluster = [
                ("name", Kind::Name),
                ("prefix", Kind::OneOf(&["/failoverd", "/a/b/", "//x"])),
                ("ttl", Kind::Ttl),
                ("on_lost", Kind::OneOf(&["close", "keep"])),
            ];
            self.table(&cluster)?;
        }
        let services = if self.tame {
            self.u.int_in_range(1..=MAX_SERVICES)?
        } else {
            self.u.int_in_range(0..=MAX_SERVICES)?
        };
        for i in 0..services {
            self.service(i)?;
        }
        if !self.tame && self.u.ratio(1, 16)? {
            let garbage = self.any_string()?;
            self.line(&garbage);
        }
        Ok(())
    }

    fn service(&mut self, index: u32) -> Result<()> {
        self.line("[[service]]");
        // Mostly a unique name and listen address, so that the
        // interesting keys are reached.
        if self.tame || self.u.ratio(7, 8)? {
            self.entry("name", &quoted(&format!("svc{index}")));
        } else {
            self.key_value("name", Kind::Name)?;
        }
        let has_dns = self.u.ratio(1, 8)?;
        if self.tame || self.u.ratio(7, 8)? {
            let listen = format!("127.0.0.{}:0", index + 1);
            self.entry("listen", &quoted(&listen));
        } else if has_dns || self.u.ratio(1, 2)? {
            self.key_value("listen", Kind::Listen)?;
        }
        if self.u.ratio(1, 8)? {
            self.key_value("freebind", Kind::Bool)?;
        }
        self.settings()?;
        let backends = if self.tame {
            self.u.int_in_range(1..=MAX_BACKENDS)?
        } else {
            self.u.int_in_range(0..=MAX_BACKENDS)?
        };
        for b in 0..backends {
            self.line("[[service.backend]]");
            if self.tame || self.u.ratio(7, 8)? {
                self.entry("name", &quoted(&format!("b{b}")));
            } else {
                self.key_value("name", Kind::Name)?;
            }
            let hostname = self.u.ratio(1, 8)?;
            if hostname {
                let address = *self.u.choose(HOST_ADDRESSES)?;
                self.entry("address", &quoted(address));
            } else {
                self.key_value("address", Kind::Address)?;
            }
            if (has_dns && hostname) || self.u.ratio(1, 8)? {
                self.key_value("publish", Kind::Ip)?;
            }
            self.maybe_unknown_key()?;
        }
        if has_dns {
            self.line("[service.dns]");
            self.key_value("server", Kind::DnsServer)?;
            if self.tame || self.u.ratio(3, 4)? {
                self.entry("zone", &quoted("example.com."));
                let name =
                    *self
                        .u
                        .choose(&["db.example.com.", "example.com.", "A.Example.COM."])?;
                self.entry("name", &quoted(name));
            } else {
                self.key_value("zone", Kind::DnsName)?;
                self.key_value("name", Kind::DnsName)?;
            }
            self.key_value("ttl", Kind::Ttl)?;
            self.key_value("tsig_key", Kind::KeyFile)?;
            self.maybe_unknown_key()?;
        }
        Ok(())
    }

    /// Settings of `[defaults]` or a service. In a tame case
    /// `check_timeout` never exceeds `check_interval` (both are set
    /// together), `check` is the case's kind, and `check_send` and
    /// `check_expect` appear only with "tcp".
    fn settings(&mut self) -> Result<()> {
        for (key, kind) in self.pick_keys(SETTINGS)? {
            if !self.tame {
                self.key_value(key, kind)?;
                continue;
            }
            match key {
                "check_interval" | "check_timeout" => {
                    let interval = self.valid_duration(Kind::Positive)?;
                    // The shortest positive duration, or the interval itself.
                    let timeout = if self.u.arbitrary()? {
                        "0.000000001s".to_string()
                    } else {
                        interval.clone()
                    };
                    self.entry("check_interval", &quoted(&interval));
                    self.entry("check_timeout", &quoted(&timeout));
                }
                "check" => {
                    let check = self.check;
                    self.entry("check", &quoted(check));
                }
                "check_send" | "check_expect" if self.check != "tcp" => {}
                _ => self.key_value(key, kind)?,
            }
        }
        self.maybe_unknown_key()
    }

    /// Some of `keys`, each with a value, plus maybe an unknown key.
    fn table(&mut self, keys: &[(&'static str, Kind)]) -> Result<()> {
        for (key, kind) in self.pick_keys(keys)? {
            self.key_value(key, kind)?;
        }
        self.maybe_unknown_key()
    }

    /// Up to [`MAX_KEYS`] distinct keys of `keys` (TOML rejects a key set
    /// twice; that case comes from the byte mutation). In a tame case the
    /// pair `check_interval`/`check_timeout` counts once.
    fn pick_keys(&mut self, keys: &[(&'static str, Kind)]) -> Result<Vec<(&'static str, Kind)>> {
        let n = self.u.int_in_range(0..=MAX_KEYS)?;
        let mut picked: Vec<(&'static str, Kind)> = Vec::new();
        for _ in 0..n {
            let (key, kind) = *self.u.choose(keys)?;
            let same = |k: &str| {
                k == key
                    || (self.tame
                        && matches!(k, "check_interval" | "check_timeout")
                        && matches!(key, "check_interval" | "check_timeout"))
            };
            if !picked.iter().any(|(k, _)| same(k)) {
                picked.push((key, kind));
            }
        }
        Ok(picked)
    }

    fn maybe_unknown_key(&mut self) -> Result<()> {
        if !self.tame && self.u.ratio(1, 32)? {
            let key = *self
                .u
                .choose(&["typo", "check_intervall", "Name", "listen ", "\"\""])?;
            self.entry(key, "1");
        }
        Ok(())
    }

    fn key_value(&mut self, key: &str, kind: Kind) -> Result<()> {
        let value = if self.tame || self.u.ratio(3, 4)? {
            self.valid(kind)?
        } else if self.u.ratio(3, 4)? {
            self.invalid(kind)?
        } else {
            self.wrong_type()?
        };
        self.entry(key, &value);
        Ok(())
    }

    /// A valid value of `kind`: boundaries first, then anything in range.
    fn valid(&mut self, kind: Kind) -> Result<String> {
        Ok(match kind {
            Kind::Duration | Kind::Positive | Kind::Ttl => quoted(&self.valid_duration(kind)?),
            Kind::Count => self.integer(&[0, 1, 2, 3, 100, u32::MAX as i64], 0, u32::MAX as i64)?,
            Kind::AtLeastOne => {
                self.integer(&[1, 2, 3, 100, u32::MAX as i64], 1, u32::MAX as i64)?
            }
            Kind::MaxConnections => self.integer(&[0, 1, 2, 10, 1_000_000], 0, 1_000_000)?,
            Kind::Port => self.integer(&[0, 1, 8008, 65535], 0, 65535)?,
            Kind::Bool => self.u.arbitrary::<bool>()?.to_string(),
            Kind::Text => {
                if self.u.ratio(1, 2)? {
                    quoted(self.u.choose(STRINGS)?)
                } else {
                    let s = self.any_string()?;
                    quoted(&s)
                }
            }
            Kind::Socket => {
                quoted(
                    self.u
                        .choose(&["/run/failoverd/failoverd.sock", "ctl.sock", " "])?,
                )
            }
            Kind::HttpPath => quoted(self.u.choose(VALID_PATHS)?),
            Kind::File => {
                let path = if self.u.arbitrary()? {
                    self.fixtures.password.display().to_string()
                } else {
                    String::new()
                };
                quoted(&path)
            }
            Kind::KeyFile => quoted(
                &self
                    .u
                    .choose(&self.fixtures.keys[..3])?
                    .display()
                    .to_string(),
            ),
            Kind::Command => self.array(&[&[], &["true"], &["sh", "-c", "exit 1"]])?,
            Kind::Allow => self.list(VALID_ALLOW, 0)?,
            Kind::Url => self.list(VALID_URLS, 1)?,
            Kind::Listen => quoted(self.u.choose(VALID_LISTENS)?),
            Kind::DnsServer => {
                let server = *self
                    .u
                    .choose(&["127.0.0.1:53", "[::1]:5353", "10.0.0.53:53"])?;
                quoted(server)
            }
            Kind::Address => {
                if self.u.ratio(3, 4)? {
                    let port = self.u.int_in_range(1..=65535u16)?;
                    quoted(&format!("127.0.0.1:{port}"))
                } else {
                    quoted(self.u.choose(VALID_ADDRESSES)?)
                }
            }
            Kind::Ip => quoted(self.u.choose(VALID_IPS)?),
            Kind::Name => quoted(self.u.choose(VALID_NAMES)?),
            Kind::DnsName => quoted(self.u.choose(&["example.com.", "db.example.com."])?),
            Kind::OneOf(allowed) => quoted(self.u.choose(allowed)?),
        })
    }

    /// A value of the right type that validation must reject.
    fn invalid(&mut self, kind: Kind) -> Result<String> {
        Ok(match kind {
            Kind::Duration | Kind::Positive | Kind::Ttl => {
                let zero_or_short = match kind {
                    Kind::Positive => "0s",
                    Kind::Ttl => "999ms",
                    _ => "-1s",
                };
                if self.u.ratio(1, 8)? {
                    quoted(zero_or_short)
                } else {
                    quoted(self.u.choose(INVALID_DURATIONS)?)
                }
            }
            Kind::Count | Kind::AtLeastOne => {
                self.integer(&[-1, u32::MAX as i64 + 1, i64::MIN, i64::MAX], i64::MIN, -1)?
            }
            Kind::MaxConnections => self.integer(
                &[1_000_001, u32::MAX as i64, i64::MAX, -1],
                1_000_001,
                i64::MAX,
            )?,
            Kind::Port => self.integer(&[65536, -1, i64::MIN, i64::MAX], 65536, i64::MAX)?,
            Kind::HttpPath => quoted(self.u.choose(INVALID_PATHS)?),
            Kind::File => quoted(&self.fixtures.dir.join("missing").display().to_string()),
            Kind::KeyFile => {
                let broken = self
                    .u
                    .choose(&self.fixtures.keys[3..])?
                    .display()
                    .to_string();
                let missing = self.fixtures.dir.join("missing").display().to_string();
                quoted(if self.u.arbitrary()? {
                    &broken
                } else {
                    &missing
                })
            }
            Kind::Command => self.array(&[&[""], &["", "x"]])?,
            Kind::Allow => self.list(INVALID_ALLOW, 1)?,
            Kind::Url => self.list(INVALID_URLS, 0)?,
            Kind::Listen => quoted(self.u.choose(INVALID_LISTENS)?),
            Kind::DnsServer => {
                let server = *self.u.choose(&["127.0.0.1:0", "[::1]:0", "localhost:53"])?;
                quoted(server)
            }
            Kind::Address => quoted(self.u.choose(INVALID_ADDRESSES)?),
            Kind::Ip => quoted(self.u.choose(INVALID_IPS)?),
            Kind::Name => quoted(self.u.choose(INVALID_NAMES)?),
            Kind::DnsName => quoted(self.u.choose(INVALID_DNS_NAMES)?),
            Kind::Socket => quoted(""),
            Kind::OneOf(_) => quoted(
                self.u
                    .choose(&["", "AUTO", "Close", "v3", "udp", "on", "/", "x"])?,
            ),
            // Every value of these types is valid: take another type.
            Kind::Bool | Kind::Text => self.wrong_type()?,
        })
    }

    /// A valid duration for `kind` ("0s" only for [`Kind::Duration`],
    /// at least 1 s for [`Kind::Ttl`]), often at the edges.
    fn valid_duration(&mut self, kind: Kind) -> Result<String> {
        let mut pools = vec![LONG_DURATIONS];
        if kind != Kind::Ttl {
            pools.push(SHORT_DURATIONS);
        }
        if kind == Kind::Duration {
            pools.push(ZERO_DURATIONS);
        }
        if self.u.ratio(3, 4)? {
            let pool = *self.u.choose(&pools)?;
            return Ok(self.u.choose(pool)?.to_string());
        }
        // Anything up to one year, in any unit.
        let (unit, per_second, max) = *self.u.choose(&[
            ("ms", 1000, 31_536_000_000u64),
            ("s", 1, 31_536_000),
            ("m", 1, 525_600),
            ("h", 1, 8760),
        ])?;
        let low = match kind {
            Kind::Duration => 0,
            Kind::Positive => 1,
            _ => per_second,
        };
        Ok(format!("{}{unit}", self.u.int_in_range(low..=max)?))
    }

    /// One of `boundaries`, or any integer in `low..=high`.
    fn integer(&mut self, boundaries: &[i64], low: i64, high: i64) -> Result<String> {
        Ok(if self.u.ratio(3, 4)? {
            self.u.choose(boundaries)?.to_string()
        } else {
            self.u.int_in_range(low..=high)?.to_string()
        })
    }

    /// One of `choices` as a TOML array of strings.
    fn array(&mut self, choices: &[&[&str]]) -> Result<String> {
        let items = *self.u.choose(choices)?;
        let items: Vec<String> = items.iter().map(|s| quoted(s)).collect();
        Ok(format!("[{}]", items.join(", ")))
    }

    /// An array of `min`-3 strings from `items`.
    fn list(&mut self, items: &[&str], min: usize) -> Result<String> {
        let n = self.u.int_in_range(min..=3usize)?;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(quoted(self.u.choose(items)?));
        }
        Ok(format!("[{}]", out.join(", ")))
    }

    /// A value of some TOML type, for a key that wants another.
    fn wrong_type(&mut self) -> Result<String> {
        Ok(match self.u.int_in_range(0..=7u8)? {
            0 => self.u.arbitrary::<i64>()?.to_string(),
            1 => "1.5".to_string(),
            2 => "true".to_string(),
            3 => "[]".to_string(),
            4 => "[1, \"a\"]".to_string(),
            5 => "{ a = 1 }".to_string(),
            6 => "1979-05-27T07:32:00Z".to_string(),
            _ => quoted(&"x".repeat(self.u.int_in_range(0..=100_000usize)?)),
        })
    }

    /// A string from the input: any unicode, or a long run.
    fn any_string(&mut self) -> Result<String> {
        if self.u.ratio(1, 8)? {
            let c: char = self.u.arbitrary()?;
            let n = self.u.int_in_range(0..=65_536usize)?;
            Ok(std::iter::repeat_n(c, n).collect())
        } else {
            let s: String = self.u.arbitrary()?;
            Ok(s)
        }
    }

    fn entry(&mut self, key: &str, value: &str) {
        self.out.push_str(key);
        self.out.push_str(" = ");
        self.out.push_str(value);
        self.out.push('\n');
    }

    fn line(&mut self, line: &str) {
        self.out.push_str(line);
        self.out.push('\n');
    }
}

/// A TOML basic string holding `s`, every character outside printable
/// ASCII escaped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Insert, delete, replace or duplicate a few bytes; the result is read
/// as UTF-8 with replacement characters, as a file would be.
fn mutate(u: &mut Unstructured<'_>, mut bytes: Vec<u8>) -> Result<String> {
    let edits = u.int_in_range(1..=8u8)?;
    for _ in 0..edits {
        let len = bytes.len();
        let at = u.int_in_range(0..=len)?;
        match u.int_in_range(0..=3u8)? {
            0 => bytes.insert(at, u.arbitrary()?),
            1 if at < len => {
                let n = u.int_in_range(1..=(len - at).min(16))?;
                bytes.drain(at..at + n);
            }
            2 if at < len => bytes[at] = u.arbitrary()?,
            3 if at < len => {
                let n = u.int_in_range(1..=(len - at).min(64))?;
                let copy = bytes[at..at + n].to_vec();
                let to = u.int_in_range(0..=bytes.len())?;
                bytes.splice(to..to, copy);
            }
            _ => bytes.push(b'\n'),
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
