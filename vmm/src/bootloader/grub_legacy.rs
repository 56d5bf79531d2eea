//! GRUB legacy's `menu.lst` / `grub.conf`: `default N`, then `title` entries with
//! `root (hd0,0)`, `kernel PATH ARGS`, `initrd PATH`. A keyword may be followed by
//! spaces or `=`. `default saved` boots entry 0 (the saved file is not read).

use super::{clean_path, ConfigError, Menu, MenuEntry, MAX_ENTRIES, MAX_LINE};

/// Parses a `menu.lst`.
pub fn parse(text: &str) -> Result<Menu, ConfigError> {
    let mut menu = Menu::default();
    let mut default: Option<String> = None;
    let mut cur: Option<MenuEntry> = None;
    for (n, line) in text.lines().enumerate() {
        if line.len() > MAX_LINE {
            return Err(ConfigError::LineTooLong {
                line: n + 1,
                max: MAX_LINE,
            });
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let split = line
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(line.len());
        let (key, rest) = line.split_at(split);
        let rest = rest.trim_start().strip_prefix('=').unwrap_or(rest).trim();
        match key.to_ascii_lowercase().as_str() {
            "title" => {
                if let Some(e) = cur.take() {
                    menu.entries.push(e);
                }
                if menu.entries.len() >= MAX_ENTRIES {
                    return Err(ConfigError::TooManyEntries { max: MAX_ENTRIES });
                }
                cur = Some(MenuEntry {
                    title: rest.to_string(),
                    ..MenuEntry::default()
                });
            }
            "default" if cur.is_none() => default = Some(rest.to_string()),
            "kernel" => {
                if let Some(e) = cur.as_mut() {
                    let (k, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    e.kernel = Some(clean_path(k, "/"));
                    e.args = args.trim().to_string();
                }
            }
            "initrd" => {
                if let Some(e) = cur.as_mut() {
                    let p = rest.split_whitespace().next().unwrap_or("");
                    if !p.is_empty() {
                        e.initrds = vec![clean_path(p, "/")];
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(e) = cur.take() {
        menu.entries.push(e);
    }
    match default.as_deref().map(str::trim) {
        None | Some("saved") | Some("") => {}
        Some(d) => match d.parse::<usize>() {
            Ok(n) if n < menu.entries.len() => menu.default = n,
            _ if menu.entries.is_empty() => {}
            _ => menu.warnings.push(format!(
                "the default entry {d:?} names no menu entry; booting entry 0 as GRUB does"
            )),
        },
    }
    Ok(menu)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MENU_LST: &str = "\
# menu.lst - See: grub(8), info grub, update-grub(8)
default\t\t1
timeout\t\t5
hiddenmenu

## ## End Default Options ##

title\t\tDebian GNU/Linux, kernel 2.6.32-5-xen-amd64
root\t\t(hd0,0)
kernel\t\t/boot/vmlinuz-2.6.32-5-xen-amd64 root=/dev/xvda1 ro console=hvc0
initrd\t\t/boot/initrd.img-2.6.32-5-xen-amd64

title\t\tDebian GNU/Linux, kernel 2.6.32-5-xen-amd64 (single-user mode)
root=(hd0,0)
kernel=(hd0,0)/boot/vmlinuz-2.6.32-5-xen-amd64 root=/dev/xvda1 ro single
initrd /boot/initrd.img-2.6.32-5-xen-amd64
";

    #[test]
    fn menu_lst() {
        let m = parse(MENU_LST).unwrap();
        assert_eq!(m.entries.len(), 2);
        assert_eq!(m.default, 1);
        assert_eq!(
            m.entries[1].kernel.as_deref(),
            Some("/boot/vmlinuz-2.6.32-5-xen-amd64")
        );
        assert_eq!(m.entries[1].args, "root=/dev/xvda1 ro single");
        assert_eq!(m.entries[0].args, "root=/dev/xvda1 ro console=hvc0");
        assert_eq!(
            m.entries[0].initrds,
            vec!["/boot/initrd.img-2.6.32-5-xen-amd64".to_string()]
        );
    }

    #[test]
    fn default_past_the_end_and_hostile() {
        let m = parse(&MENU_LST.replace("default\t\t1", "default 5")).unwrap();
        assert_eq!((m.default, m.warnings.len()), (0, 1));
        let m = parse(&MENU_LST.replace("default\t\t1", "default saved")).unwrap();
        assert_eq!((m.default, m.warnings.len()), (0, 0));
        let many = "title x\nkernel /k\n".repeat(MAX_ENTRIES + 1);
        let long = format!("title x\nkernel /k {}\n", "a".repeat(MAX_LINE));
        assert!(matches!(
            parse(&long),
            Err(ConfigError::LineTooLong { line: 2, .. })
        ));
        assert!(matches!(
            parse(&many),
            Err(ConfigError::TooManyEntries { .. })
        ));
        assert!(parse("kernel\ntitle\ninitrd\n\u{0}\u{ffff}").is_ok());
    }
}
