//! GRUB 2's `grub.cfg`, as `update-grub` writes it.
//!
//! The file is split into commands with GRUB's quoting (`'...'`, `"..."`, `\`) and
//! `${var}` references kept for later; blocks (`menuentry`, `submenu`, `function`,
//! `if`/`elif`/`else`/`fi`) are nested into a tree at most [`MAX_NESTING`] deep. The
//! tree is then run: `set` and `name=value` assign variables; an `if` whose condition
//! is a `[ ... ]`/`test` of strings or numbers is evaluated, and one that cannot be
//! (a file test, a command such as `loadfont`) is skipped with all its branches, as
//! pygrub skips what it cannot evaluate; `for`/`while` loops and functions are skipped.
//! Every other command (insmod, search, echo, load_env, ...) does nothing here. Inside
//! a `menuentry`, `linux`/`linux16`/`linuxefi` and `initrd`/`initrd16`/`initrdefi` are
//! recorded. The variables GRUB itself sets for a Xen PV guest (`grub_platform=xen`,
//! `feature_menuentry_id=y`, ...) and `saved_entry`/`next_entry` from `grubenv` are
//! preset. `default` is resolved as GRUB does: a number, a title or an `--id`, with
//! `>` stepping into submenus; one naming no entry gives entry 0 and a warning.

use std::collections::HashMap;

use super::{clean_path, ConfigError, Menu, MenuEntry, MAX_ENTRIES, MAX_NESTING};

/// A piece of a word: literal text or a variable reference.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Var(String),
}

/// A word, and its text when it was written bare (no quotes, no variables): only bare
/// words are keywords.
#[derive(Clone, Debug)]
struct Word {
    segs: Vec<Seg>,
    bare: Option<String>,
}

#[derive(Clone, Debug)]
struct Cmd {
    words: Vec<Word>,
    line: usize,
}

impl Cmd {
    fn keyword(&self, i: usize) -> Option<&str> {
        self.words.get(i).and_then(|w| w.bare.as_deref())
    }
}

/// Splits the text into commands.
fn lex(text: &str) -> Result<Vec<Cmd>, ConfigError> {
    let c: Vec<char> = text.chars().collect();
    let mut cmds = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    let mut cmd_line = 1;
    let end_cmd = |words: &mut Vec<Word>, cmds: &mut Vec<Cmd>, line: usize| {
        if !words.is_empty() {
            cmds.push(Cmd {
                words: std::mem::take(words),
                line,
            });
        }
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' || ch == ';' {
            end_cmd(&mut words, &mut cmds, cmd_line);
            if ch == '\n' {
                line += 1;
            }
            i += 1;
            continue;
        }
        if ch == ' ' || ch == '\t' || ch == '\r' {
            i += 1;
            continue;
        }
        if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if words.is_empty() {
            cmd_line = line;
        }
        // A word.
        let mut segs: Vec<Seg> = Vec::new();
        let mut lit = String::new();
        let mut bare = true;
        let push_lit = |lit: &mut String, segs: &mut Vec<Seg>| {
            if !lit.is_empty() {
                segs.push(Seg::Lit(std::mem::take(lit)));
            }
        };
        while i < c.len() {
            let ch = c[i];
            match ch {
                ' ' | '\t' | '\r' | '\n' | ';' => break,
                '\\' => {
                    bare = false;
                    match c.get(i + 1) {
                        Some('\n') => line += 1,
                        Some(&n) => lit.push(n),
                        None => {}
                    }
                    i += 2;
                }
                '\'' => {
                    bare = false;
                    let start = line;
                    i += 1;
                    loop {
                        match c.get(i) {
                            None => return Err(ConfigError::Unterminated { line: start }),
                            Some('\'') => break,
                            Some(&n) => {
                                if n == '\n' {
                                    line += 1;
                                }
                                lit.push(n);
                            }
                        }
                        i += 1;
                    }
                    i += 1;
                }
                '"' => {
                    bare = false;
                    let start = line;
                    i += 1;
                    loop {
                        match c.get(i) {
                            None => return Err(ConfigError::Unterminated { line: start }),
                            Some('"') => break,
                            Some('\\') if matches!(c.get(i + 1), Some('$' | '"' | '\\')) => {
                                lit.push(c[i + 1]);
                                i += 1;
                            }
                            Some('\\') if c.get(i + 1) == Some(&'\n') => {
                                line += 1;
                                i += 1;
                            }
                            Some('$') => {
                                if let Some((name, next)) = var_ref(&c, i) {
                                    push_lit(&mut lit, &mut segs);
                                    segs.push(Seg::Var(name));
                                    i = next;
                                    continue;
                                }
                                lit.push('$');
                            }
                            Some(&n) => {
                                if n == '\n' {
                                    line += 1;
                                }
                                lit.push(n);
                            }
                        }
                        i += 1;
                    }
                    i += 1;
                }
                '$' => match var_ref(&c, i) {
                    Some((name, next)) => {
                        bare = false;
                        push_lit(&mut lit, &mut segs);
                        segs.push(Seg::Var(name));
                        i = next;
                    }
                    None => {
                        lit.push('$');
                        i += 1;
                    }
                },
                _ => {
                    lit.push(ch);
                    i += 1;
                }
            }
        }
        push_lit(&mut lit, &mut segs);
        let bare = if bare {
            Some(match segs.first() {
                Some(Seg::Lit(s)) => s.clone(),
                _ => String::new(),
            })
        } else {
            None
        };
        // `{` ends its command (`menuentry x { linux /k }` on one line); `}` is a
        // command of its own.
        match bare.as_deref() {
            Some("{") => {
                words.push(Word { segs, bare });
                end_cmd(&mut words, &mut cmds, cmd_line);
            }
            Some("}") => {
                end_cmd(&mut words, &mut cmds, cmd_line);
                words.push(Word { segs, bare });
                end_cmd(&mut words, &mut cmds, line);
            }
            _ => words.push(Word { segs, bare }),
        }
    }
    end_cmd(&mut words, &mut cmds, cmd_line);
    Ok(cmds)
}

/// `$name`, `${name}` at `c[i]` (the `$`): the name and the index after it.
fn var_ref(c: &[char], i: usize) -> Option<(String, usize)> {
    let is_name = |ch: char| ch.is_ascii_alphanumeric() || ch == '_';
    match c.get(i + 1) {
        Some('{') => {
            // A name is short: no scanning the rest of the file for a `}`.
            let close = c[i + 2..].iter().take(64).position(|&ch| ch == '}')?;
            Some((c[i + 2..i + 2 + close].iter().collect(), i + 3 + close))
        }
        Some(&ch) if is_name(ch) || ch == '?' || ch == '@' => {
            if !is_name(ch) {
                return Some((ch.to_string(), i + 2));
            }
            let n = c[i + 1..].iter().take_while(|&&ch| is_name(ch)).count();
            Some((c[i + 1..i + 1 + n].iter().collect(), i + 1 + n))
        }
        _ => None,
    }
}

#[derive(Debug)]
enum Node {
    Cmd(Cmd),
    If {
        arms: Vec<(Cmd, Vec<Node>)>,
        otherwise: Option<Vec<Node>>,
    },
    /// `head {` ... `}` with the `{` dropped from the head.
    Block {
        head: Cmd,
        body: Vec<Node>,
    },
    /// A loop: never run.
    Skipped,
}

/// What ended a sequence of commands.
#[derive(Debug)]
enum End {
    Eof,
    Brace(usize),
    Elif(Cmd),
    Else(usize),
    Fi(usize),
    Done(usize),
}

struct Parser {
    cmds: std::vec::IntoIter<Cmd>,
}

impl Parser {
    /// Splits a leading `then`/`else`/`do` off a command (`then insmod xzio`).
    fn next(&mut self, pending: &mut Option<Cmd>) -> Option<Cmd> {
        pending.take().or_else(|| self.cmds.next())
    }

    fn seq(
        &mut self,
        depth: usize,
        pending: &mut Option<Cmd>,
    ) -> Result<(Vec<Node>, End), ConfigError> {
        let mut nodes = Vec::new();
        while let Some(mut cmd) = self.next(pending) {
            let line = cmd.line;
            let structure = |what: &str| ConfigError::Structure {
                line,
                what: what.to_string(),
            };
            match cmd.keyword(0) {
                Some("}") => return Ok((nodes, End::Brace(line))),
                Some("fi") => return Ok((nodes, End::Fi(line))),
                Some("done") => return Ok((nodes, End::Done(line))),
                Some(kw @ ("then" | "else" | "do")) => {
                    let kw = kw.to_string();
                    cmd.words.remove(0);
                    if !cmd.words.is_empty() {
                        *pending = Some(cmd);
                    }
                    match kw.as_str() {
                        "else" => return Ok((nodes, End::Else(line))),
                        // A stray then/do: its command runs in sequence.
                        _ => continue,
                    }
                }
                Some("elif") => {
                    cmd.words.remove(0);
                    return Ok((nodes, End::Elif(cmd)));
                }
                Some("if") => {
                    if depth >= MAX_NESTING {
                        return Err(ConfigError::TooDeep {
                            line,
                            max: MAX_NESTING,
                        });
                    }
                    cmd.words.remove(0);
                    let mut arms = Vec::new();
                    let mut cond = cmd;
                    let otherwise;
                    loop {
                        let (body, end) = self.seq(depth + 1, pending)?;
                        arms.push((cond, body));
                        match end {
                            End::Elif(c) => cond = c,
                            End::Else(_) => {
                                let (body, end) = self.seq(depth + 1, pending)?;
                                if !matches!(end, End::Fi(_)) {
                                    return Err(structure("an if's else has no fi"));
                                }
                                otherwise = Some(body);
                                break;
                            }
                            End::Fi(_) => {
                                otherwise = None;
                                break;
                            }
                            _ => return Err(structure("an if has no fi")),
                        }
                    }
                    nodes.push(Node::If { arms, otherwise });
                }
                Some("for" | "while" | "until") => {
                    if depth >= MAX_NESTING {
                        return Err(ConfigError::TooDeep {
                            line,
                            max: MAX_NESTING,
                        });
                    }
                    loop {
                        let (_, end) = self.seq(depth + 1, pending)?;
                        match end {
                            End::Done(_) => break,
                            End::Eof => return Err(structure("a loop has no done")),
                            _ => {}
                        }
                    }
                    nodes.push(Node::Skipped);
                }
                _ if cmd.words.last().and_then(|w| w.bare.as_deref()) == Some("{") => {
                    if depth >= MAX_NESTING {
                        return Err(ConfigError::TooDeep {
                            line,
                            max: MAX_NESTING,
                        });
                    }
                    cmd.words.pop();
                    let (body, end) = self.seq(depth + 1, pending)?;
                    if !matches!(end, End::Brace(_)) {
                        return Err(structure("a block opened with { is not closed with }"));
                    }
                    nodes.push(Node::Block { head: cmd, body });
                }
                _ => nodes.push(Node::Cmd(cmd)),
            }
        }
        Ok((nodes, End::Eof))
    }
}

/// A menu item: an entry (with its flat index) or a submenu.
#[derive(Debug)]
enum Item {
    Entry {
        flat: usize,
        title: String,
        id: Option<String>,
    },
    Sub {
        title: String,
        id: Option<String>,
        items: Vec<Item>,
    },
}

/// The longest expanded word or variable value (Linux's x86 command line is 2 KiB).
const MAX_VALUE: usize = 4096;
/// The most variables.
const MAX_VARS: usize = 256;

struct Eval {
    vars: HashMap<String, String>,
    /// Per open menuentry/submenu: the values its `set`s replaced, to restore.
    scopes: Vec<Vec<(String, Option<String>)>>,
    entries: Vec<MenuEntry>,
    /// A word or value past [`MAX_VALUE`], or variables past [`MAX_VARS`], at this line.
    too_big: Option<usize>,
}

impl Eval {
    fn expand(&mut self, w: &Word, line: usize) -> String {
        let mut s = String::new();
        for seg in &w.segs {
            let part = match seg {
                Seg::Lit(l) => l.as_str(),
                Seg::Var(v) => self.vars.get(v).map_or("", String::as_str),
            };
            if s.len() + part.len() > MAX_VALUE {
                self.too_big.get_or_insert(line);
                break;
            }
            s.push_str(part);
        }
        s
    }

    fn words(&mut self, c: &Cmd) -> Vec<String> {
        c.words.iter().map(|w| self.expand(w, c.line)).collect()
    }

    fn set_var(&mut self, k: &str, v: &str, line: usize) {
        if !self.vars.contains_key(k) && self.vars.len() >= MAX_VARS {
            self.too_big.get_or_insert(line);
            return;
        }
        let old = self.vars.insert(k.to_string(), v.to_string());
        if let Some(scope) = self.scopes.last_mut() {
            scope.push((k.to_string(), old));
        }
    }

    fn open_scope(&mut self) {
        self.scopes.push(Vec::new());
    }

    fn close_scope(&mut self) {
        for (k, old) in self.scopes.pop().unwrap_or_default().into_iter().rev() {
            match old {
                Some(v) => self.vars.insert(k, v),
                None => self.vars.remove(&k),
            };
        }
    }

    /// Runs a sequence at menu level `path` (submenu titles), collecting items.
    fn run(
        &mut self,
        nodes: &[Node],
        path: &[String],
        items: &mut Vec<Item>,
        entry: &mut Option<MenuEntry>,
    ) -> Result<(), ConfigError> {
        for node in nodes {
            match node {
                Node::Skipped => {}
                Node::Cmd(c) => self.command(c, entry),
                Node::If { arms, otherwise } => {
                    let mut taken = false;
                    let mut unknown = false;
                    for (cond, body) in arms {
                        match self.condition(cond) {
                            Some(true) => {
                                self.run(body, path, items, entry)?;
                                taken = true;
                                break;
                            }
                            Some(false) => {}
                            None => {
                                unknown = true;
                                break;
                            }
                        }
                    }
                    if !taken && !unknown {
                        if let Some(body) = otherwise {
                            self.run(body, path, items, entry)?;
                        }
                    }
                }
                Node::Block { head, body } => {
                    let w = self.words(head);
                    match w.first().map(String::as_str) {
                        Some("menuentry") if entry.is_none() => {
                            let (title, id) = title_and_id(&w[1..]);
                            if self.entries.len() >= MAX_ENTRIES {
                                return Err(ConfigError::TooManyEntries { max: MAX_ENTRIES });
                            }
                            self.open_scope();
                            let mut e = Some(MenuEntry::default());
                            self.run(body, path, &mut Vec::new(), &mut e)?;
                            self.close_scope();
                            let mut e = e.unwrap_or_default();
                            let flat_title = if path.is_empty() {
                                title.clone()
                            } else {
                                e.leaf_title = Some(title.clone());
                                format!("{}>{title}", path.join(">"))
                            };
                            e.title = flat_title;
                            e.id = id.clone();
                            items.push(Item::Entry {
                                flat: self.entries.len(),
                                title,
                                id,
                            });
                            self.entries.push(e);
                        }
                        Some("submenu") if entry.is_none() => {
                            let (title, id) = title_and_id(&w[1..]);
                            self.open_scope();
                            let mut sub = Vec::new();
                            let mut p = path.to_vec();
                            p.push(title.clone());
                            self.run(body, &p, &mut sub, entry)?;
                            self.close_scope();
                            items.push(Item::Sub {
                                title,
                                id,
                                items: sub,
                            });
                        }
                        // function bodies, nested menuentries: not run.
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn command(&mut self, c: &Cmd, entry: &mut Option<MenuEntry>) {
        let w = self.words(c);
        let Some(name) = w.first() else { return };
        match name.as_str() {
            "set" => {
                for a in &w[1..] {
                    if let Some((k, v)) = a.split_once('=') {
                        self.set_var(k, v, c.line);
                    }
                }
            }
            "linux" | "linux16" | "linuxefi" | "kernel" => {
                if let (Some(e), Some(k)) = (entry.as_mut(), w.get(1)) {
                    e.kernel = Some(clean_path(k, "/"));
                    // An unquoted variable that is empty or unset (Ubuntu's `$vt_handoff`)
                    // leaves no argument behind.
                    let args: Vec<&str> = w[2..]
                        .iter()
                        .map(String::as_str)
                        .filter(|a| !a.is_empty())
                        .collect();
                    e.args = args.join(" ");
                }
            }
            "initrd" | "initrd16" | "initrdefi" => {
                if let Some(e) = entry.as_mut() {
                    e.initrds = w[1..].iter().map(|p| clean_path(p, "/")).collect();
                }
            }
            _ => {
                // `name=value` without set.
                if c.words.len() == 1 {
                    if let Some((k, v)) = name.split_once('=') {
                        if !k.is_empty()
                            && k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                        {
                            self.set_var(k, v, c.line);
                        }
                    }
                }
            }
        }
    }

    /// `[ ... ]` / `test ...` over strings and numbers; `None` when it cannot be
    /// evaluated here.
    fn condition(&mut self, c: &Cmd) -> Option<bool> {
        let mut w = self.words(c);
        match w.first().map(String::as_str) {
            Some("[") if c.keyword(c.words.len().saturating_sub(1)) == Some("]") => {
                w.pop();
                w.remove(0);
            }
            Some("test") => {
                w.remove(0);
            }
            Some("true") if w.len() == 1 => return Some(true),
            Some("false") if w.len() == 1 => return Some(false),
            _ => return None,
        }
        let mut negate = false;
        if w.first().map(String::as_str) == Some("!") {
            negate = true;
            w.remove(0);
        }
        let r = match w.as_slice() {
            [] => false,
            [s] => !s.is_empty(),
            [op, s] if op == "-n" => !s.is_empty(),
            [op, s] if op == "-z" => s.is_empty(),
            [a, op, b] => match op.as_str() {
                "=" | "==" => a == b,
                "!=" => a != b,
                "-eq" | "-ne" | "-lt" | "-le" | "-gt" | "-ge" => {
                    let (x, y) = (a.trim().parse::<i64>().ok()?, b.trim().parse::<i64>().ok()?);
                    match op.as_str() {
                        "-eq" => x == y,
                        "-ne" => x != y,
                        "-lt" => x < y,
                        "-le" => x <= y,
                        "-gt" => x > y,
                        _ => x >= y,
                    }
                }
                _ => return None,
            },
            _ => return None,
        };
        Some(r != negate)
    }
}

/// A menuentry's/submenu's title (the first argument not an option) and `--id`.
fn title_and_id(args: &[String]) -> (String, Option<String>) {
    let (mut title, mut id) = (None, None);
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        match a.as_str() {
            "--class" | "--users" | "--hotkey" | "--source" => i += 1,
            "--id" => {
                id = args.get(i + 1).cloned();
                i += 1;
            }
            "--unrestricted" => {}
            "" => {}
            _ if a.starts_with("--") => {}
            _ => {
                if title.is_none() {
                    title = Some(a.clone());
                }
            }
        }
        i += 1;
    }
    (title.unwrap_or_default(), id)
}

/// Finds the flat index GRUB's `default` names.
fn resolve(items: &[Item], default: &str) -> Option<usize> {
    let mut level = items;
    let mut parts = default.split('>').peekable();
    while let Some(p) = parts.next() {
        let p = p.trim();
        let item = match p.parse::<usize>() {
            Ok(n) => level.get(n)?,
            Err(_) => level.iter().find(|it| match it {
                Item::Entry { title, id, .. } | Item::Sub { title, id, .. } => {
                    title == p || id.as_deref() == Some(p)
                }
            })?,
        };
        match item {
            Item::Entry { flat, .. } => return Some(*flat),
            Item::Sub { items, .. } => {
                if parts.peek().is_none() {
                    return first_entry(items);
                }
                level = items;
            }
        }
    }
    None
}

fn first_entry(items: &[Item]) -> Option<usize> {
    items.iter().find_map(|it| match it {
        Item::Entry { flat, .. } => Some(*flat),
        Item::Sub { items, .. } => first_entry(items),
    })
}

/// Parses a `grub.cfg`; `grubenv` is the environment block next to it, if any.
pub fn parse(text: &str, grubenv: Option<&str>) -> Result<Menu, ConfigError> {
    let cmds = lex(text)?;
    let mut parser = Parser {
        cmds: cmds.into_iter(),
    };
    let mut pending = None;
    let (nodes, end) = parser.seq(0, &mut pending)?;
    match end {
        End::Eof => {}
        End::Brace(line) | End::Else(line) | End::Fi(line) | End::Done(line) => {
            return Err(ConfigError::Structure {
                line,
                what: "a }, else, fi or done closes nothing".to_string(),
            })
        }
        End::Elif(c) => {
            return Err(ConfigError::Structure {
                line: c.line,
                what: "an elif outside an if".to_string(),
            })
        }
    }
    let mut vars: HashMap<String, String> = [
        ("grub_platform", "xen"),
        ("grub_cpu", "x86_64"),
        ("feature_menuentry_id", "y"),
        ("feature_default_font_path", "y"),
        ("feature_all_video_module", "y"),
        ("feature_timeout_style", "y"),
        ("feature_platform_search_hint", "y"),
        ("feature_200_final", "y"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for line in grubenv.unwrap_or("").lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if matches!(k, "saved_entry" | "next_entry") && v.len() <= MAX_VALUE {
                vars.insert(k.to_string(), v.to_string());
            }
        }
    }
    let mut ev = Eval {
        vars,
        scopes: Vec::new(),
        entries: Vec::new(),
        too_big: None,
    };
    let mut items = Vec::new();
    ev.run(&nodes, &[], &mut items, &mut None)?;
    if let Some(line) = ev.too_big {
        return Err(ConfigError::TooBig {
            line,
            max_value: MAX_VALUE,
            max_vars: MAX_VARS,
        });
    }
    let mut menu = Menu {
        entries: ev.entries,
        default: 0,
        warnings: Vec::new(),
    };
    let default = ev.vars.get("default").cloned().unwrap_or_default();
    if !default.trim().is_empty() && !menu.entries.is_empty() {
        match resolve(&items, &default) {
            Some(i) => menu.default = i,
            None => menu.warnings.push(format!(
                "the default entry {default:?} names no menu entry; booting entry 0 as GRUB does"
            )),
        }
    }
    Ok(menu)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's update-grub output (cloud image), abridged only in the theme part.
    pub const DEBIAN12: &str = r#"#
# DO NOT EDIT THIS FILE
#
# It is automatically generated by grub-mkconfig using templates
# from /etc/grub.d and settings from /etc/default/grub
#

### BEGIN /etc/grub.d/00_header ###
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="0"
fi

if [ x"${feature_menuentry_id}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi

export menuentry_id_option

if [ "${prev_saved_entry}" ]; then
  set saved_entry="${prev_saved_entry}"
  save_env saved_entry
  set prev_saved_entry=
  save_env prev_saved_entry
  set boot_once=true
fi

function savedefault {
  if [ -z "${boot_once}" ]; then
    saved_entry="${chosen}"
    save_env saved_entry
  fi
}
function load_video {
  if [ x$feature_all_video_module = xy ]; then
    insmod all_video
  else
    insmod efi_gop
    insmod efi_uga
    insmod ieee1275_fb
    insmod vbe
    insmod vga
    insmod video_bochs
    insmod video_cirrus
  fi
}

if [ x$feature_default_font_path = xy ] ; then
   font=unicode
else
insmod part_msdos
insmod ext2
set root='hd0,msdos1'
if [ x$feature_platform_search_hint = xy ]; then
  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos1 --hint-efi=hd0,msdos1 --hint-baremetal=ahci0,msdos1  8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b
else
  search --no-floppy --fs-uuid --set=root 8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b
fi
    font="/usr/share/grub/unicode.pf2"
fi

if loadfont $font ; then
  set gfxmode=auto
  load_video
  insmod gfxterm
  set locale_dir=$prefix/locale
  set lang=C.UTF-8
  insmod gettext
fi
terminal_output gfxterm
if [ "${recordfail}" = 1 ] ; then
  set timeout=30
else
  if [ x$feature_timeout_style = xy ] ; then
    set timeout_style=menu
    set timeout=5
  # Fallback normal timeout code in case the timeout_style feature is
  # unavailable.
  else
    set timeout=5
  fi
fi
### END /etc/grub.d/00_header ###

### BEGIN /etc/grub.d/05_debian_theme ###
set menu_color_normal=cyan/blue
set menu_color_highlight=white/blue
### END /etc/grub.d/05_debian_theme ###

### BEGIN /etc/grub.d/10_linux ###
function gfxmode {
	set gfxpayload="${1}"
}
set linux_gfx_mode=
export linux_gfx_mode
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b' {
	load_video
	insmod gzio
	if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
	insmod part_msdos
	insmod ext2
	set root='hd0,msdos1'
	if [ x$feature_platform_search_hint = xy ]; then
	  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos1 --hint-efi=hd0,msdos1 --hint-baremetal=ahci0,msdos1  8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b
	else
	  search --no-floppy --fs-uuid --set=root 8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b
	fi
	echo	'Loading Linux 6.1.0-57-cloud-amd64 ...'
	linux	/boot/vmlinuz-6.1.0-57-cloud-amd64 root=UUID=8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b ro console=hvc0 quiet
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-6.1.0-57-cloud-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-57-cloud-amd64' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-6.1.0-57-cloud-amd64-advanced-8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b' {
		load_video
		insmod gzio
		if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
		insmod part_msdos
		insmod ext2
		set root='hd0,msdos1'
		search --no-floppy --fs-uuid --set=root 8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b
		echo	'Loading Linux 6.1.0-57-cloud-amd64 ...'
		linux	/boot/vmlinuz-6.1.0-57-cloud-amd64 root=UUID=8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b ro console=hvc0 quiet
		echo	'Loading initial ramdisk ...'
		initrd	/boot/initrd.img-6.1.0-57-cloud-amd64
	}
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-57-cloud-amd64 (recovery mode)' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-6.1.0-57-cloud-amd64-recovery-8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b' {
		load_video
		insmod gzio
		if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
		insmod part_msdos
		insmod ext2
		set root='hd0,msdos1'
		search --no-floppy --fs-uuid --set=root 8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b
		echo	'Loading Linux 6.1.0-57-cloud-amd64 ...'
		linux	/boot/vmlinuz-6.1.0-57-cloud-amd64 root=UUID=8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b ro single console=hvc0
		echo	'Loading initial ramdisk ...'
		initrd	/boot/initrd.img-6.1.0-57-cloud-amd64
	}
}

### END /etc/grub.d/10_linux ###

### BEGIN /etc/grub.d/30_uefi-firmware ###
if [ "$grub_platform" = "efi" ]; then
	fwsetup --is-supported
	if [ "$?" = 0 ]; then
		menuentry 'UEFI Firmware Settings' $menuentry_id_option 'uefi-firmware' {
			fwsetup
		}
	fi
fi
### END /etc/grub.d/30_uefi-firmware ###

### BEGIN /etc/grub.d/41_custom ###
if [ -f  ${config_directory}/custom.cfg ]; then
  source ${config_directory}/custom.cfg
elif [ -z "${config_directory}" -a -f  $prefix/custom.cfg ]; then
  source $prefix/custom.cfg
fi
### END /etc/grub.d/41_custom ###
"#;

    #[test]
    fn debian12() {
        let m = parse(DEBIAN12, None).unwrap();
        assert_eq!(m.entries.len(), 3, "{m:#?}");
        assert_eq!(m.default, 0);
        assert!(m.warnings.is_empty());
        let e = &m.entries[0];
        assert_eq!(e.title, "Debian GNU/Linux");
        assert_eq!(
            e.id.as_deref(),
            Some("gnulinux-simple-8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b")
        );
        assert_eq!(
            e.kernel.as_deref(),
            Some("/boot/vmlinuz-6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            e.args,
            "root=UUID=8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b ro console=hvc0 quiet"
        );
        assert_eq!(
            e.initrds,
            vec!["/boot/initrd.img-6.1.0-57-cloud-amd64".to_string()]
        );
        assert_eq!(
            m.entries[2].title,
            "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-57-cloud-amd64 (recovery mode)"
        );
        assert!(m.entries[2].args.contains("single"));
    }

    fn with_default(d: &str) -> Menu {
        parse(
            &DEBIAN12.replace("set default=\"0\"", &format!("set default=\"{d}\"")),
            None,
        )
        .unwrap()
    }

    #[test]
    fn default_forms() {
        assert_eq!(with_default("1>1").default, 2);
        assert_eq!(with_default("1>0").default, 1);
        assert_eq!(with_default("1").default, 1, "a submenu: its first entry");
        assert_eq!(
            with_default("gnulinux-advanced-8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b>gnulinux-6.1.0-57-cloud-amd64-recovery-8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b").default,
            2
        );
        assert_eq!(
            with_default("Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-57-cloud-amd64").default,
            1
        );
        let m = with_default("7");
        assert_eq!(m.default, 0);
        assert_eq!(m.warnings.len(), 1);
        let m = with_default("1>9");
        assert_eq!(m.default, 0);
        assert_eq!(m.warnings.len(), 1);
    }

    #[test]
    fn next_entry_and_saved_entry_from_grubenv() {
        let m = parse(
            DEBIAN12,
            Some("# GRUB Environment Block\nnext_entry=1>1\n#####"),
        )
        .unwrap();
        assert_eq!(m.default, 2);
        let saved = DEBIAN12.replace("set default=\"0\"", "set default=\"${saved_entry}\"");
        let m = parse(&saved, Some("saved_entry=1>0\n")).unwrap();
        assert_eq!(m.default, 1);
        // No grubenv: saved_entry is empty, default is entry 0, no warning.
        let m = parse(&saved, None).unwrap();
        assert_eq!((m.default, m.warnings.len()), (0, 0));
        // An entry's `set` does not leak out of it.
        let m = parse(
            "set default=1\nmenuentry a { set default=0; linux /a }\nmenuentry b { linux /b }\n",
            None,
        )
        .unwrap();
        assert_eq!(m.default, 1);
    }

    #[test]
    fn variables_devices_and_variants() {
        let cfg = "set kver=6.12.0\nset default='Two'\nmenuentry One { linux16 ($root)/vmlinuz-${kver} a=b; initrd16 /i1 /i2 }\nmenuentry \"Two\" {\n linuxefi (hd0,gpt2)/k \"x y\" z\n}\n";
        let m = parse(cfg, None).unwrap();
        assert_eq!(m.entries[0].kernel.as_deref(), Some("/vmlinuz-6.12.0"));
        assert_eq!(
            m.entries[0].initrds,
            vec!["/i1".to_string(), "/i2".to_string()]
        );
        assert_eq!(m.entries[1].kernel.as_deref(), Some("/k"));
        assert_eq!(m.entries[1].args, "x y z");
        assert_eq!(m.default, 1);
    }

    #[test]
    fn ubuntu_functions_and_empty_variables() {
        let cfg = r#"
function gfxmode {
	set gfxpayload="${1}"
	if [ "${1}" = "keep" ]; then
		set vt_handoff=vt.handoff=7
	else
		set vt_handoff=
	fi
}
if [ "${recordfail}" != 1 ]; then
  if [ -e ${prefix}/gfxblacklist.txt ]; then
    set linux_gfx_mode=keep
  else
    set linux_gfx_mode=text
  fi
else
  set linux_gfx_mode=text
fi
export linux_gfx_mode
menuentry 'Ubuntu' --class ubuntu --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-x' {
	recordfail
	load_video
	gfxmode $linux_gfx_mode
	insmod gzio
	if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
	linux	/boot/vmlinuz-5.15.0-91-generic root=UUID=x ro  console=hvc0 $vt_handoff
	initrd	/boot/initrd.img-5.15.0-91-generic
}
"#;
        let m = parse(cfg, None).unwrap();
        assert_eq!(m.entries.len(), 1);
        assert_eq!(m.entries[0].args, "root=UUID=x ro console=hvc0");
        // No `menuentry_id_option` set in this file: the id is just another argument.
        assert_eq!(m.entries[0].id, None);
        assert_eq!(m.entries[0].title, "Ubuntu");
    }

    #[test]
    fn mutated_configs_never_panic() {
        let base: Vec<char> = DEBIAN12.chars().collect();
        let alphabet: Vec<char> = "{}[];'\"\\$#\n >=x01ifthenelsefi".chars().collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as usize
        };
        for _ in 0..300 {
            let mut t = base.clone();
            for _ in 0..(1 + next() % 8) {
                let at = next() % t.len();
                match next() % 3 {
                    0 => {
                        t.remove(at);
                    }
                    1 => t.insert(at, alphabet[next() % alphabet.len()]),
                    _ => t[at] = alphabet[next() % alphabet.len()],
                }
            }
            let text: String = t.into_iter().collect();
            if let Ok(m) = parse(&text, Some("saved_entry=1>0\n")) {
                assert!(m.entries.is_empty() || m.default < m.entries.len());
            }
        }
    }

    #[test]
    fn hostile() {
        let deep = "if true; then\n".repeat(MAX_NESTING + 1) + &"fi\n".repeat(MAX_NESTING + 1);
        assert!(matches!(
            parse(&deep, None),
            Err(ConfigError::TooDeep { .. })
        ));
        let deep = "submenu x {\n".repeat(40) + &"}\n".repeat(40);
        assert!(matches!(
            parse(&deep, None),
            Err(ConfigError::TooDeep { .. })
        ));
        let many = "menuentry x { linux /k }\n".repeat(MAX_ENTRIES + 1);
        assert!(matches!(
            parse(&many, None),
            Err(ConfigError::TooManyEntries { .. })
        ));
        assert!(matches!(
            parse("menuentry 'x {\n", None),
            Err(ConfigError::Unterminated { line: 1 })
        ));
        assert!(matches!(
            parse("}\n", None),
            Err(ConfigError::Structure { .. })
        ));
        assert!(matches!(
            parse("menuentry x {\n linux /k\n", None),
            Err(ConfigError::Structure { .. })
        ));
        assert!(matches!(
            parse("if [ a ]; then\n", None),
            Err(ConfigError::Structure { .. })
        ));
        assert!(matches!(
            parse("fi\n", None),
            Err(ConfigError::Structure { .. })
        ));
        let doubling = "set a=0123456789abcdef\n".to_string() + &"set a=$a$a\n".repeat(64);
        assert!(matches!(
            parse(&doubling, None),
            Err(ConfigError::TooBig { .. })
        ));
        let vars: String = (0..1000).map(|i| format!("v{i}=x\n")).collect();
        assert!(matches!(
            parse(&vars, None),
            Err(ConfigError::TooBig { .. })
        ));
        let scan = "${a ".repeat(200_000);
        assert!(parse(&scan, None).is_ok());
        // Odd but harmless.
        assert!(parse("${\n$\\", None).is_ok());
        assert!(parse("", None).unwrap().entries.is_empty());
        let m = parse("for x in a b; do menuentry y { linux /k }; done\nwhile true; do\necho\ndone\nmenuentry z { linux /z }", None).unwrap();
        assert_eq!(m.entries.len(), 1);
    }
}
