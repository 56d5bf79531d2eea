//! The xl.cfg file syntax, as libxlu's lexer (`libxlu_cfg_l.l`) and grammar
//! (`libxlu_cfg_y.y`) define it: `KEY = VALUE` or `KEY += VALUE` settings ended by a
//! newline or `;`, values that are a string (single or double quotes), a number, or a
//! `[ ... ]` list that may span lines and end with a comma, and `#` comments.

use thiserror::Error;

/// The largest configuration file read: xl.cfg files are a few hundred bytes, so
/// anything this large is the wrong file.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The most items one list holds (after `+=`); a domain has at most a few dozen disks
/// or NICs.
pub const MAX_LIST_ITEMS: usize = 4096;

/// How deeply lists nest: libxlu's grammar allows lists in lists but no key uses
/// them, and the bound keeps the recursive parser's stack small.
const MAX_DEPTH: usize = 8;

/// What is wrong at a place in the file.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SyntaxError {
    /// A character that starts no token.
    #[error("unexpected character {0:?}{hint}", hint = python_hint(*.0))]
    Unexpected(char),
    /// A key that starts with an upper-case letter or a digit.
    #[error("`{0}` is not a setting name (names are lower-case letters, digits, `.` and `_`, starting with a letter)")]
    BadName(String),
    /// A number followed by letters (`512M`).
    #[error("`{0}` is not a number (sizes are plain numbers, memory in MiB)")]
    BadNumber(String),
    /// A quote with no closing quote on its line.
    #[error("the string has no closing {0} on this line")]
    UnterminatedString(char),
    /// A backslash escape libxlu does not know.
    #[error("`\\{0}` is not an escape in a quoted string (known: \\\\ \\' \\\" \\a \\b \\f \\n \\r \\t \\v \\xHH \\OOO)")]
    BadEscape(char),
    /// A token the grammar does not allow here.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the grammar wanted.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// A `[` with no `]` before the end of the file.
    #[error("the list opened on line {0} has no closing `]`")]
    UnterminatedList(u32),
    /// A list longer than [`MAX_LIST_ITEMS`].
    #[error("the list has more than {MAX_LIST_ITEMS} items")]
    ListTooLong,
    /// Lists nested deeper than any key uses.
    #[error("lists are nested more than {MAX_DEPTH} deep")]
    TooDeep,
    /// `+=` between a list and a string.
    #[error("`{0} +=` adds a list to a string or a string to a list")]
    AddMismatch(String),
}

fn python_hint(c: char) -> &'static str {
    // libxlu flags these as signs of a Python-syntax (xm) configuration.
    if "+-.():".contains(c) {
        " (xl.cfg is not Python: values are quoted strings, numbers or [lists])"
    } else {
        ""
    }
}

/// A syntax error with its place (1-based line and column).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{line}:{column}: {kind}")]
pub struct ParseError {
    /// Line.
    pub line: u32,
    /// Column, in characters.
    pub column: u32,
    /// What is wrong.
    #[source]
    pub kind: SyntaxError,
}

/// A value: an atom (string or number, both kept as text as libxlu does) or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string or a number.
    Atom {
        /// The text (a string's, unquoted and unescaped).
        text: String,
        /// Whether it was quoted (a number token otherwise).
        quoted: bool,
        /// The line it is on.
        line: u32,
    },
    /// A `[ ... ]` list.
    List {
        /// The items.
        items: Vec<Value>,
        /// The line of the `[`.
        line: u32,
    },
}

impl Value {
    /// The line the value starts on.
    pub fn line(&self) -> u32 {
        match self {
            Value::Atom { line, .. } | Value::List { line, .. } => *line,
        }
    }
}

/// How a setting was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `KEY = VALUE`.
    Assign,
    /// `KEY += VALUE`: the value is already joined with the earlier one.
    Add,
}

/// One `KEY = VALUE` statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key.
    pub name: String,
    /// The value (for `+=`, the earlier value with this one added).
    pub value: Value,
    /// The line of the key.
    pub line: u32,
    /// `=` or `+=`.
    pub op: Op,
}

/// A parsed file: its settings in file order. A key set twice keeps both; the last
/// one counts ([`Settings::get`]), as libxlu's lookup finds the newest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// In file order.
    pub settings: Vec<Setting>,
}

impl Settings {
    /// The last setting of `name`.
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings.iter().rev().find(|s| s.name == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Number(String),
    Str(String),
    Comma,
    Open,
    Close,
    Assign,
    Add,
    Semi,
    Newline,
    Eof,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("the name `{s}`"),
        Tok::Number(s) => format!("the number `{s}`"),
        Tok::Str(s) => format!("the string {s:?}"),
        Tok::Comma => "`,`".into(),
        Tok::Open => "`[`".into(),
        Tok::Close => "`]`".into(),
        Tok::Assign => "`=`".into(),
        Tok::Add => "`+=`".into(),
        Tok::Semi => "`;`".into(),
        Tok::Newline => "the end of the line".into(),
        Tok::Eof => "the end of the file".into(),
    }
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: u32,
    column: u32,
}

impl Lexer<'_> {
    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn err(&self, line: u32, column: u32, kind: SyntaxError) -> ParseError {
        ParseError { line, column, kind }
    }

    /// The next token and the place it starts.
    fn next(&mut self) -> Result<(Tok, u32, u32), ParseError> {
        loop {
            let (line, column) = (self.line, self.column);
            let Some(&c) = self.chars.peek() else {
                return Ok((Tok::Eof, line, column));
            };
            let tok = match c {
                ' ' | '\t' | '\r' => {
                    // libxlu skips blanks; a CR of a CRLF file is taken as a blank too.
                    self.bump();
                    continue;
                }
                '#' => {
                    // A comment runs to the end of the line; the newline still ends the
                    // statement. A comment on the last line needs no newline.
                    while self.chars.peek().is_some_and(|&c| c != '\n') {
                        self.bump();
                    }
                    continue;
                }
                '\n' => {
                    self.bump();
                    Tok::Newline
                }
                ',' | '[' | ']' | '=' | ';' => {
                    self.bump();
                    match c {
                        ',' => Tok::Comma,
                        '[' => Tok::Open,
                        ']' => Tok::Close,
                        '=' => Tok::Assign,
                        _ => Tok::Semi,
                    }
                }
                '+' => {
                    self.bump();
                    if self.chars.peek() == Some(&'=') {
                        self.bump();
                        Tok::Add
                    } else {
                        return Err(self.err(line, column, SyntaxError::Unexpected('+')));
                    }
                }
                '\'' | '"' => Tok::Str(self.string(c, line, column)?),
                'a'..='z' => {
                    let s = self.take_while(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_'));
                    if self.chars.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                        // `Memory` or `vcpuS`: the name goes on in letters libxlu
                        // does not take.
                        let rest = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
                        return Err(self.err(line, column, SyntaxError::BadName(s + &rest)));
                    }
                    Tok::Ident(s)
                }
                '0'..='9' => {
                    // libxlu's number token: digits, hex digits and `x`; strtol later
                    // decides whether it is a number.
                    let s = self.take_while(|c| matches!(c, '0'..='9' | 'a'..='f' | 'x'));
                    if self.chars.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                        let rest = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
                        return Err(self.err(line, column, SyntaxError::BadNumber(s + &rest)));
                    }
                    Tok::Number(s)
                }
                'A'..='Z' | '_' => {
                    let s = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
                    return Err(self.err(line, column, SyntaxError::BadName(s)));
                }
                c => return Err(self.err(line, column, SyntaxError::Unexpected(c))),
            };
            return Ok((tok, line, column));
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> String {
        let mut s = String::new();
        while let Some(&c) = self.chars.peek() {
            if !f(c) {
                break;
            }
            s.push(c);
            self.bump();
        }
        s
    }

    /// A quoted string, with libxlu's escapes (`xlu__cfgl_dequote`): `\\ \' \"`, the C
    /// letters, `\xHH` and octal `\OOO`. libxlu's numeric escapes drop the character
    /// (a bug); here they give it, as C does.
    fn string(&mut self, quote: char, line: u32, column: u32) -> Result<String, ParseError> {
        self.bump();
        let unterminated = |l: &Self| l.err(line, column, SyntaxError::UnterminatedString(quote));
        let mut out = String::new();
        loop {
            let Some(&c) = self.chars.peek() else {
                return Err(unterminated(self));
            };
            if c == '\n' {
                return Err(unterminated(self));
            }
            self.bump();
            if c == quote {
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            // The escape is reported at its backslash, one column back.
            let (el, ec) = (self.line, self.column - 1);
            let Some(e) = self.chars.peek().copied().filter(|&e| e != '\n') else {
                return Err(unterminated(self));
            };
            self.bump();
            out.push(match e {
                '"' | '\'' | '\\' => e,
                'a' => '\x07',
                'b' => '\x08',
                'f' => '\x0c',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                'v' => '\x0b',
                'x' => {
                    let h = self.take_digits(2, 16);
                    if h.len() != 2 {
                        return Err(self.err(el, ec, SyntaxError::BadEscape('x')));
                    }
                    char::from(u8::from_str_radix(&h, 16).unwrap_or(0))
                }
                '0'..='7' => {
                    let mut o = String::from(e);
                    o.push_str(&self.take_digits(2, 8));
                    // Three octal digits reach 0o777; a byte is what C keeps.
                    char::from((u32::from_str_radix(&o, 8).unwrap_or(0) & 0xff) as u8)
                }
                other => return Err(self.err(el, ec, SyntaxError::BadEscape(other))),
            });
        }
    }

    fn take_digits(&mut self, max: usize, radix: u32) -> String {
        let mut s = String::new();
        while s.len() < max {
            match self.chars.peek() {
                Some(&c) if c.is_digit(radix) => {
                    s.push(c);
                    self.bump();
                }
                _ => break,
            }
        }
        s
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    tok: Tok,
    line: u32,
    column: u32,
}

impl Parser<'_> {
    fn advance(&mut self) -> Result<(), ParseError> {
        let (t, l, c) = self.lex.next()?;
        self.tok = t;
        self.line = l;
        self.column = c;
        Ok(())
    }

    fn expected(&self, expected: &'static str) -> ParseError {
        ParseError {
            line: self.line,
            column: self.column,
            kind: SyntaxError::Expected {
                expected,
                found: describe(&self.tok),
            },
        }
    }

    fn skip_newlines(&mut self) -> Result<(), ParseError> {
        while self.tok == Tok::Newline {
            self.advance()?;
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        let line = self.line;
        match std::mem::replace(&mut self.tok, Tok::Eof) {
            Tok::Str(text) => {
                self.advance()?;
                Ok(Value::Atom {
                    text,
                    quoted: true,
                    line,
                })
            }
            Tok::Number(text) => {
                self.advance()?;
                Ok(Value::Atom {
                    text,
                    quoted: false,
                    line,
                })
            }
            Tok::Open => {
                if depth >= MAX_DEPTH {
                    return Err(ParseError {
                        line,
                        column: self.column,
                        kind: SyntaxError::TooDeep,
                    });
                }
                self.advance()?;
                self.skip_newlines()?;
                let mut items = Vec::new();
                loop {
                    match self.tok {
                        Tok::Close => break,
                        Tok::Eof => {
                            return Err(ParseError {
                                line: self.line,
                                column: self.column,
                                kind: SyntaxError::UnterminatedList(line),
                            })
                        }
                        _ => {}
                    }
                    if items.len() >= MAX_LIST_ITEMS {
                        return Err(ParseError {
                            line: self.line,
                            column: self.column,
                            kind: SyntaxError::ListTooLong,
                        });
                    }
                    items.push(self.value(depth + 1)?);
                    self.skip_newlines()?;
                    match self.tok {
                        Tok::Comma => {
                            self.advance()?;
                            self.skip_newlines()?;
                        }
                        Tok::Close => break,
                        Tok::Eof => {
                            return Err(ParseError {
                                line: self.line,
                                column: self.column,
                                kind: SyntaxError::UnterminatedList(line),
                            })
                        }
                        _ => return Err(self.expected("`,` or `]` in the list")),
                    }
                }
                self.advance()?;
                Ok(Value::List { items, line })
            }
            other => {
                self.tok = other;
                Err(self.expected("a value (a quoted string, a number or a [list])"))
            }
        }
    }
}

/// Parses a whole file's text. The first error stops the parse (libxlu goes on to
/// report more, but xl refuses the file all the same).
pub fn parse(text: &str) -> Result<Settings, ParseError> {
    let mut p = Parser {
        lex: Lexer {
            chars: text.chars().peekable(),
            line: 1,
            column: 1,
        },
        tok: Tok::Eof,
        line: 1,
        column: 1,
    };
    p.advance()?;
    let mut out = Settings::default();
    loop {
        match std::mem::replace(&mut p.tok, Tok::Eof) {
            Tok::Eof => return Ok(out),
            Tok::Newline | Tok::Semi => p.advance()?,
            Tok::Ident(name) => {
                let (line, column) = (p.line, p.column);
                p.advance()?;
                let op = match p.tok {
                    Tok::Assign => Op::Assign,
                    Tok::Add => Op::Add,
                    _ => return Err(p.expected("`=` or `+=` after the setting name")),
                };
                p.advance()?;
                let mut value = p.value(0)?;
                match p.tok {
                    Tok::Newline | Tok::Semi | Tok::Eof => {}
                    _ => return Err(p.expected("the end of the line or `;` after the value")),
                }
                if op == Op::Add {
                    // As libxlu: join with the newest earlier value of the key.
                    if let Some(prev) = out.get(&name) {
                        value = add(&prev.value, value).ok_or_else(|| ParseError {
                            line,
                            column,
                            kind: SyntaxError::AddMismatch(name.clone()),
                        })?;
                        if let Value::List { items, .. } = &value {
                            if items.len() > MAX_LIST_ITEMS {
                                return Err(ParseError {
                                    line,
                                    column,
                                    kind: SyntaxError::ListTooLong,
                                });
                            }
                        }
                    }
                }
                out.settings.push(Setting {
                    name,
                    value,
                    line,
                    op,
                });
            }
            other => {
                p.tok = other;
                return Err(p.expected("a setting (NAME = VALUE)"));
            }
        }
    }
}

/// `prev += next`: strings concatenate, lists append; None for a mix.
fn add(prev: &Value, next: Value) -> Option<Value> {
    match (prev, next) {
        (Value::Atom { text: a, .. }, Value::Atom { text, quoted, line }) => Some(Value::Atom {
            text: format!("{a}{text}"),
            quoted,
            line,
        }),
        (Value::List { items: a, .. }, Value::List { items, line }) => {
            let mut all = a.clone();
            all.extend(items);
            Some(Value::List { items: all, line })
        }
        _ => None,
    }
}
