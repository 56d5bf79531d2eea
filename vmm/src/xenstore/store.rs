//! The tree, its operations, transactions and watches, and request dispatch,
//! following Xen's C xenstored (`core.c`, `transaction.c`, `watch.c`, `domain.c`).

use std::collections::HashMap;

use super::wire::*;
use super::{quota, OutMsg, Perm, Xenstore, DOMID_ANY, SERVER_FEATURES};
use super::{XS_PERM_IGNORE, XS_PERM_READ, XS_PERM_WRITE};

/// Internal permission bit: ownership (`XS_PERM_OWNER`).
const PERM_OWNER: u8 = 0x08;
const PERM_ALL: u8 = XS_PERM_READ | XS_PERM_WRITE | PERM_OWNER;

/// Who is asking: the guest (an unprivileged domain) or the VMM (the toolstack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Who {
    Guest,
    Tools,
}

/// A node: value, child names in creation order, permissions, generation count.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub value: Vec<u8>,
    pub children: Vec<String>,
    pub perms: Vec<Perm>,
    pub generation: u64,
}

impl Node {
    fn childlen(&self) -> usize {
        self.children.iter().map(|c| c.len() + 1).sum()
    }

    /// Size as xenstored accounts it (`calc_node_acc_size()`): a 16-byte header,
    /// 8 bytes a permission, the value and the nul-separated child names.
    fn size(&self) -> usize {
        16 + 8 * self.perms.len() + self.value.len() + self.childlen()
    }

    fn owner(&self) -> u32 {
        self.perms.first().map_or(0, |p| p.id)
    }
}

/// A registered watch of the guest.
pub(super) struct Watch {
    /// Canonical (absolute or `@special`) path.
    node: String,
    token: Vec<u8>,
    /// Bytes to strip from event paths (relative watches).
    prefix_len: usize,
}

/// How an event path is matched against watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// Only a watch on exactly this path.
    Exact,
    /// Watches on this path or any parent of it.
    Subtree,
}

/// A node touched by a transaction (`struct accessed_node`).
struct Access {
    path: String,
    /// Generation at the first read (inner `None`: node absent then). Checked at
    /// commit.
    read_gen: Option<Option<u64>>,
    modified: bool,
    /// The transaction's view of the node (`None`: absent/deleted).
    node: Option<Node>,
    /// Permissions before the transaction touched it (for watch permission checks).
    old_perms: Option<Vec<Perm>>,
    fire: Option<Match>,
    mem: usize,
}

/// An open transaction of the guest.
pub(super) struct Txn {
    id: u32,
    accessed: Vec<Access>,
    index: HashMap<String, usize>,
    /// Change of the guest's owned-node count if committed.
    owned_delta: isize,
    node_created: bool,
    fail: bool,
    mem: usize,
}

/// `xenstore_strings_to_perms()` for one entry.
pub(super) fn parse_perm(s: &[u8]) -> Option<Perm> {
    let access = match s.first()? {
        b'r' => XS_PERM_READ,
        b'w' => XS_PERM_WRITE,
        b'b' => XS_PERM_READ | XS_PERM_WRITE,
        b'n' => 0,
        _ => return None,
    };
    let rest = &s[1..];
    if rest.is_empty() {
        return None;
    }
    let (v, end) = c_strtol0(rest);
    if end != rest.len() {
        return None;
    }
    Some(Perm {
        id: v as u32,
        access,
    })
}

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// `get_parent()`.
fn parent_of(name: &str) -> String {
    match name.get(1..).and_then(|s| s.rfind('/')) {
        Some(i) => name[..i + 1].to_string(),
        None => "/".to_string(),
    }
}

fn basename(name: &str) -> &str {
    name.rfind('/').map_or(name, |i| &name[i + 1..])
}

fn child_name(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{parent}/{child}")
    }
}

/// `is_child()` without depth: `child` is `parent` or below it.
fn is_child(child: &str, parent: &str) -> bool {
    if !child.starts_with(parent) {
        return false;
    }
    let rest = &child.as_bytes()[parent.len()..];
    !(parent.len() > 1 && !rest.is_empty() && rest[0] != b'/')
}

/// Length of a `/local/domain/<id>/` prefix (`sscanf("/local/domain/%5u/%n")`), or 0.
fn local_offset(name: &str) -> usize {
    const PFX: &str = "/local/domain/";
    let Some(rest) = name.strip_prefix(PFX) else {
        return 0;
    };
    let r = rest.as_bytes();
    let mut i = 0;
    if matches!(r.first(), Some(b'+' | b'-')) {
        i = 1;
    }
    let start = i;
    while i < r.len() && i < 5 && r[i].is_ascii_digit() {
        i += 1;
    }
    if i == start || r.get(i) != Some(&b'/') {
        return 0;
    }
    PFX.len() + i + 1
}

fn ok_payload() -> Vec<u8> {
    b"OK\0".to_vec()
}

impl Xenstore {
    /// Creates a node with no parent link (root and `@` special nodes).
    pub(super) fn insert_raw(&mut self, path: &str, perms: Vec<Perm>) {
        self.generation += 1;
        let n = Node {
            value: Vec::new(),
            children: Vec::new(),
            perms,
            generation: self.generation,
        };
        if n.owner() == self.domid {
            self.guest_nodes += 1;
        }
        self.nodes.insert(path.to_string(), n);
    }

    /// Memory charged to the guest: queued output, watches, transaction copies.
    pub(super) fn guest_mem(&self) -> usize {
        self.out_mem + self.watch_mem + self.txns.iter().map(|t| t.mem).sum::<usize>()
    }

    /// `perm_for_conn()`.
    fn perm_for(&self, who: Who, perms: &[Perm]) -> u8 {
        if who == Who::Tools {
            return PERM_ALL;
        }
        let d = self.domid;
        let allows = |p: &Perm| p.id == d || p.id == DOMID_ANY;
        let Some(p0) = perms.first() else {
            return 0;
        };
        if allows(p0) {
            return PERM_ALL;
        }
        for p in &perms[1..] {
            if p.access & XS_PERM_IGNORE == 0 && allows(p) {
                return p.access & PERM_ALL;
            }
        }
        p0.access & PERM_ALL
    }

    /// `domain_alloc_permrefs()`: entries for domains that do not exist (anything
    /// but dom0 and the guest; `DOMID_ANY` unless `allow_any`) are ignored.
    pub(super) fn mark_unknown_domains(&self, mut perms: Vec<Perm>, allow_any: bool) -> Vec<Perm> {
        for p in &mut perms {
            let known = p.id == 0 || p.id == self.domid || (allow_any && p.id == DOMID_ANY);
            if !known {
                p.access |= XS_PERM_IGNORE;
            }
        }
        perms
    }

    /// `canonicalize()`: validates `raw` and makes it absolute.
    pub(super) fn canonicalize(
        &self,
        who: Who,
        raw: &[u8],
        allow_special: bool,
    ) -> Result<String, XsError> {
        if !raw.iter().all(|&b| valid_char(b)) || (raw.first() == Some(&b'@') && !allow_special) {
            return Err(XsError::EINVAL);
        }
        // Only valid characters (ASCII) remain.
        let raw = std::str::from_utf8(raw).map_err(|_| XsError::EINVAL)?;
        let name = if raw.starts_with('/') || raw.starts_with('@') {
            raw.to_string()
        } else {
            format!("{}/{}", self.dom_path, raw)
        };
        if (name.ends_with('/') && name != "/") || name.contains("//") {
            return Err(XsError::EINVAL);
        }
        let too_long = match who {
            Who::Guest => name.len() - local_offset(&name) >= XENSTORE_REL_PATH_MAX,
            Who::Tools => name.len() > XENSTORE_ABS_PATH_MAX,
        };
        if too_long {
            return Err(XsError::EINVAL);
        }
        Ok(name)
    }

    fn txn_mut(&mut self, id: u32) -> Option<&mut Txn> {
        self.txns.iter_mut().find(|t| t.id == id)
    }

    fn fail_txn(&mut self, tx: Option<u32>) {
        if let Some(t) = tx.and_then(|id| self.txn_mut(id)) {
            t.fail = true;
        }
    }

    /// `read_node()`: the node as `tx` sees it; in a transaction the first read is
    /// recorded for the commit-time conflict check.
    fn node_get(&mut self, tx: Option<u32>, path: &str) -> Result<Option<Node>, XsError> {
        let global = self.nodes.get(path).cloned();
        let Some(id) = tx else {
            return Ok(global);
        };
        let mem_now = self.guest_mem();
        let Some(txn) = self.txn_mut(id) else {
            return Ok(global);
        };
        if let Some(&i) = txn.index.get(path) {
            return Ok(txn.accessed[i].node.clone());
        }
        if txn.accessed.len() + 1 >= quota::TRANS_NODES {
            txn.fail = true;
            return Err(XsError::ENOSPC);
        }
        let mem = path.len() + global.as_ref().map_or(0, Node::size);
        if mem_now + mem >= quota::MEMORY {
            txn.fail = true;
            return Err(XsError::ENOMEM);
        }
        txn.index.insert(path.to_string(), txn.accessed.len());
        txn.accessed.push(Access {
            path: path.to_string(),
            read_gen: Some(global.as_ref().map(|n| n.generation)),
            modified: false,
            node: global.clone(),
            old_perms: global.as_ref().map(|n| n.perms.clone()),
            fire: None,
            mem,
        });
        txn.mem += mem;
        Ok(global)
    }

    /// `write_node()`/`db_delete()`: stores (or, for `None`, deletes) `path` in the
    /// global tree or in the transaction's copy, with a fresh generation count.
    fn node_put(&mut self, tx: Option<u32>, path: &str, node: Option<Node>) -> Result<(), XsError> {
        let node = node.map(|mut n| {
            self.generation += 1;
            n.generation = self.generation;
            n
        });
        let domid = self.domid;
        let owned = |n: &Option<Node>| n.as_ref().is_some_and(|n| n.owner() == domid);
        let Some(id) = tx else {
            let old_owned = owned(&self.nodes.get(path).cloned());
            let new_owned = owned(&node);
            match (old_owned, new_owned) {
                (true, false) => self.guest_nodes -= 1,
                (false, true) => self.guest_nodes += 1,
                _ => {}
            }
            match node {
                Some(n) => {
                    self.nodes.insert(path.to_string(), n);
                }
                None => {
                    self.nodes.remove(path);
                }
            }
            return Ok(());
        };
        // Every modification reads the node first, so it is recorded already; make
        // sure of it all the same.
        if self
            .txn_mut(id)
            .is_some_and(|t| !t.index.contains_key(path))
        {
            self.node_get(tx, path)?;
        }
        let Some(txn) = self.txn_mut(id) else {
            return Err(XsError::ENOENT);
        };
        let i = txn.index[path];
        let a = &mut txn.accessed[i];
        let delta = owned(&node) as isize - owned(&a.node) as isize;
        let mem = path.len() + node.as_ref().map_or(0, Node::size);
        let old_mem = a.mem;
        a.mem = mem;
        a.node = node;
        a.modified = true;
        txn.owned_delta += delta;
        txn.mem = txn.mem + mem - old_mem;
        Ok(())
    }

    /// `fire_watches()`: in a transaction the event is queued for the commit.
    fn fire(
        &mut self,
        tx: Option<u32>,
        name: &str,
        m: Match,
        node: Option<&Node>,
        old_perms: Option<&[Perm]>,
    ) {
        if let Some(id) = tx {
            if let Some(txn) = self.txn_mut(id) {
                match txn.index.get(name) {
                    Some(&i) => {
                        let a = &mut txn.accessed[i];
                        a.fire = match (a.fire, m) {
                            (_, Match::Subtree) => Some(Match::Subtree),
                            (None, Match::Exact) => Some(Match::Exact),
                            (f, Match::Exact) => f,
                        };
                    }
                    None => txn.fail = true,
                }
            }
            return;
        }
        self.fire_now(name, m, node, old_perms);
    }

    fn fire_now(&mut self, name: &str, m: Match, node: Option<&Node>, old_perms: Option<&[Perm]>) {
        if self.watches.is_empty() || !self.watch_permitted(name, node, old_perms) {
            return;
        }
        let events: Vec<(String, Vec<u8>)> = self
            .watches
            .iter()
            .filter(|w| match m {
                Match::Exact => w.node == name,
                Match::Subtree => is_child(name, &w.node),
            })
            .map(|w| {
                let p = name.get(w.prefix_len..).unwrap_or(name);
                (p.to_string(), w.token.clone())
            })
            .collect();
        for (p, t) in events {
            self.send_event(&p, &t);
        }
    }

    /// `watch_permitted()`: the guest must be able to read the node (before or after
    /// a permission change) or its parent.
    fn watch_permitted(&self, name: &str, node: Option<&Node>, old_perms: Option<&[Perm]>) -> bool {
        if let Some(p) = old_perms {
            if self.perm_for(Who::Guest, p) & XS_PERM_READ != 0 {
                return true;
            }
        }
        let own = match node.or_else(|| self.nodes.get(name)) {
            Some(n) => self.perm_for(Who::Guest, &n.perms),
            None => return false,
        };
        if own & XS_PERM_READ != 0 {
            return true;
        }
        self.nodes
            .get(&parent_of(name))
            .is_some_and(|p| self.perm_for(Who::Guest, &p.perms) & XS_PERM_READ != 0)
    }

    /// `send_event()`: queues a watch event unless too long, already pending, or
    /// over the memory quota.
    pub(super) fn send_event(&mut self, path: &str, token: &[u8]) {
        let len = path.len() + 1 + token.len() + 1;
        if len > XENSTORE_PAYLOAD_MAX {
            return;
        }
        let mut payload = Vec::with_capacity(len);
        payload.extend_from_slice(path.as_bytes());
        payload.push(0);
        payload.extend_from_slice(token);
        payload.push(0);
        if !path.starts_with('@')
            && self
                .out
                .iter()
                .any(|m| !m.reply && m.bytes[HEADER_LEN..] == payload[..])
        {
            return;
        }
        if self.guest_mem() + len + HEADER_LEN >= quota::MEMORY {
            return;
        }
        self.push_out(XS_WATCH_EVENT, 0, 0, &payload, false);
    }

    fn push_out(&mut self, ty: u32, req_id: u32, tx_id: u32, payload: &[u8], reply: bool) {
        let hdr = MsgHeader {
            ty,
            req_id,
            tx_id,
            len: payload.len() as u32,
        };
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(&hdr.to_bytes());
        bytes.extend_from_slice(payload);
        self.out_mem += bytes.len();
        if reply {
            self.outstanding += 1;
        }
        self.out.push_back(OutMsg {
            bytes,
            sent: 0,
            reply,
        });
    }

    /// `send_reply()`: a reply to `req`, or E2BIG if the payload is too long.
    fn send_reply(&mut self, req: &MsgHeader, ty: u32, payload: &[u8]) {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            self.send_error(req, XsError::E2BIG);
            return;
        }
        self.push_out(ty, req.req_id, req.tx_id, payload, true);
    }

    fn send_error(&mut self, req: &MsgHeader, e: XsError) {
        let mut p = e.as_str().as_bytes().to_vec();
        p.push(0);
        self.push_out(XS_ERROR, req.req_id, req.tx_id, &p, true);
    }

    /// `get_node()` after canonicalisation: the node if `who` has all of `perm`;
    /// otherwise ENOENT or EACCES as `errno_from_parents()` decides.
    fn get_node_chk(
        &mut self,
        who: Who,
        tx: Option<u32>,
        name: &str,
        perm: u8,
    ) -> Result<Node, XsError> {
        let err = match self.node_get(tx, name)? {
            Some(n) if self.perm_for(who, &n.perms) & perm == perm => return Ok(n),
            Some(_) => XsError::EACCES,
            None => XsError::ENOENT,
        };
        let parent_perm = self.ask_parents(who, tx, name)?;
        Err(if parent_perm & perm != 0 {
            err
        } else {
            XsError::EACCES
        })
    }

    /// `ask_parents()`: `who`'s access to the nearest existing ancestor.
    fn ask_parents(&mut self, who: Who, tx: Option<u32>, name: &str) -> Result<u8, XsError> {
        let mut cur = name.to_string();
        loop {
            cur = parent_of(&cur);
            if let Some(n) = self.node_get(tx, &cur)? {
                return Ok(self.perm_for(who, &n.perms));
            }
            if cur == "/" {
                return Ok(0);
            }
        }
    }

    fn owned_now(&self, tx: Option<u32>) -> isize {
        let delta = tx
            .and_then(|id| self.txns.iter().find(|t| t.id == id))
            .map_or(0, |t| t.owned_delta);
        self.guest_nodes as isize + delta
    }

    /// `create_node()`: creates `name` and its missing parents (inheriting the
    /// nearest existing parent's permissions; a guest owns what it creates).
    fn create_node(
        &mut self,
        who: Who,
        tx: Option<u32>,
        name: &str,
        data: &[u8],
    ) -> Result<(), XsError> {
        let mut names = vec![name.to_string()];
        let (parent_name, mut parent) = loop {
            let p = parent_of(names.last().expect("non-empty"));
            match self.node_get(tx, &p)? {
                Some(n) => break (p, n),
                None if p == "/" => return Err(XsError::ENOENT),
                None => names.push(p),
            }
        };
        let mut perms = parent.perms.clone();
        if perms.is_empty() {
            perms.push(Perm::none(0));
        }
        if who == Who::Guest {
            perms[0].id = self.domid;
        }
        let mut new_nodes = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            let children = if i == 0 {
                Vec::new()
            } else {
                vec![basename(&names[i - 1]).to_string()]
            };
            let value = if i == 0 { data.to_vec() } else { Vec::new() };
            new_nodes.push(Node {
                value,
                children,
                perms: perms.clone(),
                generation: 0,
            });
        }
        parent
            .children
            .push(basename(names.last().expect("non-empty")).to_string());
        if who == Who::Guest {
            let new_owned = new_nodes.len() as isize;
            let too_many = self.owned_now(tx) + new_owned >= quota::NODES as isize;
            let too_big = new_nodes
                .iter()
                .chain(std::iter::once(&parent))
                .any(|n| n.size() >= quota::NODE_SIZE);
            if too_many || too_big {
                self.fail_txn(tx);
                return Err(XsError::ENOSPC);
            }
        }
        if let Some(t) = tx.and_then(|id| self.txn_mut(id)) {
            t.node_created = true;
        }
        for (nm, n) in names.iter().zip(new_nodes) {
            self.node_put(tx, nm, Some(n))?;
        }
        self.node_put(tx, &parent_name, Some(parent))
    }

    pub(super) fn op_write(
        &mut self,
        who: Who,
        tx: Option<u32>,
        name: &str,
        data: &[u8],
    ) -> Result<(), XsError> {
        match self.get_node_chk(who, tx, name, XS_PERM_WRITE) {
            Ok(mut n) => {
                n.value = data.to_vec();
                if who == Who::Guest && n.size() >= quota::NODE_SIZE {
                    self.fail_txn(tx);
                    return Err(XsError::ENOSPC);
                }
                self.node_put(tx, name, Some(n))?;
            }
            Err(XsError::ENOENT) => self.create_node(who, tx, name, data)?,
            Err(e) => return Err(e),
        }
        self.fire(tx, name, Match::Subtree, None, None);
        Ok(())
    }

    pub(super) fn op_mkdir(
        &mut self,
        who: Who,
        tx: Option<u32>,
        name: &str,
    ) -> Result<(), XsError> {
        match self.get_node_chk(who, tx, name, XS_PERM_WRITE) {
            Ok(_) => Ok(()),
            Err(XsError::ENOENT) => {
                self.create_node(who, tx, name, &[])?;
                self.fire(tx, name, Match::Subtree, None, None);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn op_rm(&mut self, who: Who, tx: Option<u32>, name: &str) -> Result<(), XsError> {
        match self.get_node_chk(who, tx, name, XS_PERM_WRITE) {
            Ok(_) if name == "/" => Err(XsError::EINVAL),
            Ok(_) => self.rm_node(tx, name),
            Err(XsError::ENOENT) => {
                // Fine if the parent exists.
                if self.node_get(tx, &parent_of(name))?.is_some() {
                    Ok(())
                } else {
                    Err(XsError::ENOENT)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// `rm_node()`: deletes the subtree bottom-up, firing exact-match watches for
    /// each node below `name` and subtree watches for `name`.
    fn rm_node(&mut self, tx: Option<u32>, name: &str) -> Result<(), XsError> {
        let pname = parent_of(name);
        let Some(mut parent) = self.node_get(tx, &pname)? else {
            return Err(XsError::EINVAL);
        };
        let Some(root) = self.node_get(tx, name)? else {
            return Ok(());
        };
        // Post-order walk (children before their parent), reading everything
        // before changing anything.
        let mut order: Vec<(String, Node)> = Vec::new();
        let mut stack: Vec<(String, Node, usize)> = vec![(name.to_string(), root, 0)];
        while let Some(top) = stack.last_mut() {
            if top.2 < top.1.children.len() {
                let child = child_name(&top.0, &top.1.children[top.2]);
                top.2 += 1;
                if let Some(cn) = self.node_get(tx, &child)? {
                    stack.push((child, cn, 0));
                }
            } else {
                let (p, n, _) = stack.pop().expect("non-empty");
                order.push((p, n));
            }
        }
        for (p, n) in &order {
            self.node_put(tx, p, None)?;
            let m = if p == name {
                Match::Subtree
            } else {
                Match::Exact
            };
            self.fire(tx, p, m, Some(n), None);
        }
        let base = basename(name);
        if let Some(i) = parent.children.iter().position(|c| c == base) {
            parent.children.remove(i);
        }
        self.node_put(tx, &pname, Some(parent))
    }

    pub(super) fn op_set_perms(
        &mut self,
        who: Who,
        tx: Option<u32>,
        name: &str,
        perms: Vec<Perm>,
    ) -> Result<(), XsError> {
        match perms.first() {
            None => return Err(XsError::EINVAL),
            Some(p) if p.access & XS_PERM_IGNORE != 0 => return Err(XsError::ENOENT),
            Some(_) => {}
        }
        let mut n = self.get_node_chk(who, tx, name, XS_PERM_WRITE | PERM_OWNER)?;
        if who == Who::Guest && perms[0].id != n.owner() {
            return Err(XsError::EPERM);
        }
        let old = std::mem::replace(&mut n.perms, perms);
        if who == Who::Guest && n.size() >= quota::NODE_SIZE {
            self.fail_txn(tx);
            return Err(XsError::ENOSPC);
        }
        self.node_put(tx, name, Some(n))?;
        self.fire(tx, name, Match::Subtree, None, Some(&old));
        Ok(())
    }

    fn op_tx_start(&mut self, tx: Option<u32>) -> Result<u32, XsError> {
        if tx.is_some() {
            return Err(XsError::EBUSY);
        }
        if self.txns.len() + 1 >= quota::TRANSACTIONS {
            return Err(XsError::ENOSPC);
        }
        let id = loop {
            let id = self.next_tx_id;
            self.next_tx_id = self.next_tx_id.wrapping_add(1);
            if id != 0 && !self.txns.iter().any(|t| t.id == id) {
                break id;
            }
        };
        self.txns.push(Txn {
            id,
            accessed: Vec::new(),
            index: HashMap::new(),
            owned_delta: 0,
            node_created: false,
            fail: false,
            mem: 0,
        });
        Ok(id)
    }

    fn op_tx_end(&mut self, tx: Option<u32>, commit: bool) -> Result<(), XsError> {
        let Some(pos) = tx.and_then(|id| self.txns.iter().position(|t| t.id == id)) else {
            return Err(XsError::ENOENT);
        };
        let txn = self.txns.remove(pos);
        if !commit {
            return Ok(());
        }
        if txn.fail {
            return Err(XsError::ENOMEM);
        }
        if txn.node_created {
            let domid = self.domid;
            let owned = |n: Option<&Node>| n.is_some_and(|n| n.owner() == domid) as isize;
            let mut count = self.guest_nodes as isize;
            for a in txn.accessed.iter().filter(|a| a.modified) {
                count += owned(a.node.as_ref()) - owned(self.nodes.get(&a.path));
            }
            if count >= quota::NODES as isize {
                return Err(XsError::ENOSPC);
            }
        }
        for a in &txn.accessed {
            if let Some(g) = a.read_gen {
                if self.nodes.get(&a.path).map(|n| n.generation) != g {
                    return Err(XsError::EAGAIN);
                }
            }
        }
        for a in txn.accessed {
            if !a.modified {
                continue;
            }
            self.node_put(None, &a.path, a.node)?;
            if let Some(m) = a.fire {
                self.fire_now(&a.path, m, None, a.old_perms.as_deref());
            }
        }
        Ok(())
    }

    fn op_watch(&mut self, payload: &[u8]) -> Result<(String, Vec<u8>), XsError> {
        let v = get_strings(payload);
        // No XENSTORE_SERVER_FEATURE_WATCHDEPTH: exactly path and token.
        if v.len() != 2 {
            return Err(XsError::EINVAL);
        }
        let relative = !v[0].starts_with(b"/") && !v[0].starts_with(b"@");
        let node = self.canonicalize(Who::Guest, v[0], true)?;
        let token = v[1].to_vec();
        if self
            .watches
            .iter()
            .any(|w| w.node == node && w.token == token)
        {
            return Err(XsError::EEXIST);
        }
        if self.watches.len() + 1 >= quota::WATCHES {
            return Err(XsError::ENOSPC);
        }
        let mem = node.len() + token.len();
        if self.guest_mem() + mem >= quota::MEMORY {
            return Err(XsError::ENOMEM);
        }
        let prefix_len = if relative { self.dom_path.len() + 1 } else { 0 };
        let path = node[prefix_len..].to_string();
        self.watch_mem += mem;
        self.watches.push(Watch {
            node,
            token: token.clone(),
            prefix_len,
        });
        Ok((path, token))
    }

    fn op_unwatch(&mut self, payload: &[u8]) -> Result<(), XsError> {
        let v = get_strings(payload);
        if v.len() != 2 {
            return Err(XsError::EINVAL);
        }
        let node = self.canonicalize(Who::Guest, v[0], true)?;
        let Some(i) = self
            .watches
            .iter()
            .position(|w| w.node == node && w.token == v[1])
        else {
            return Err(XsError::ENOENT);
        };
        let w = self.watches.remove(i);
        self.watch_mem -= w.node.len() + w.token.len();
        Ok(())
    }

    /// `process_message()`: dispatches one guest request and queues its reply.
    pub(super) fn handle_request(&mut self, hdr: MsgHeader, payload: &[u8]) {
        const NOTID: u8 = 1;
        const PRIV: u8 = 2;
        let flags = match hdr.ty {
            XS_DIRECTORY | XS_READ | XS_GET_PERMS | XS_TRANSACTION_START | XS_TRANSACTION_END
            | XS_GET_DOMAIN_PATH | XS_WRITE | XS_MKDIR | XS_RM | XS_SET_PERMS
            | XS_RESET_WATCHES | XS_DIRECTORY_PART | XS_GET_FEATURE => 0,
            XS_WATCH | XS_UNWATCH => NOTID,
            XS_CONTROL
            | XS_INTRODUCE
            | XS_RELEASE
            | XS_IS_DOMAIN_INTRODUCED
            | XS_RESUME
            | XS_SET_TARGET
            | XS_SET_FEATURE
            | XS_GET_QUOTA
            | XS_SET_QUOTA => PRIV,
            _ => {
                log::debug!("xenstore: unknown operation {}", hdr.ty);
                return self.send_error(&hdr, XsError::ENOSYS);
            }
        };
        if flags & PRIV != 0 {
            return self.send_error(&hdr, XsError::EACCES);
        }
        let tx = if flags & NOTID != 0 || hdr.tx_id == 0 {
            None
        } else if self.txns.iter().any(|t| t.id == hdr.tx_id) {
            Some(hdr.tx_id)
        } else {
            return self.send_error(&hdr, XsError::ENOENT);
        };
        if hdr.ty == XS_WATCH {
            match self.op_watch(payload) {
                Ok((path, token)) => {
                    self.send_reply(&hdr, XS_WATCH, &ok_payload());
                    // Fired once straight away, after the reply.
                    self.send_event(&path, &token);
                }
                Err(e) => self.send_error(&hdr, e),
            }
            return;
        }
        match self.dispatch(hdr.ty, tx, payload) {
            Ok(reply) => self.send_reply(&hdr, hdr.ty, &reply),
            Err(e) => self.send_error(&hdr, e),
        }
    }

    fn canon_onearg(&self, payload: &[u8], allow_special: bool) -> Result<String, XsError> {
        let arg = onearg(payload).ok_or(XsError::EINVAL)?;
        self.canonicalize(Who::Guest, arg, allow_special)
    }

    fn dispatch(&mut self, ty: u32, tx: Option<u32>, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        let g = Who::Guest;
        match ty {
            XS_READ => {
                let name = self.canon_onearg(payload, false)?;
                Ok(self.get_node_chk(g, tx, &name, XS_PERM_READ)?.value)
            }
            XS_DIRECTORY => {
                let name = self.canon_onearg(payload, false)?;
                let n = self.get_node_chk(g, tx, &name, XS_PERM_READ)?;
                let mut out = Vec::with_capacity(n.childlen());
                for c in &n.children {
                    out.extend_from_slice(c.as_bytes());
                    out.push(0);
                }
                Ok(out)
            }
            XS_DIRECTORY_PART => self.directory_part(tx, payload),
            XS_GET_PERMS => {
                let name = self.canon_onearg(payload, true)?;
                let n = self.get_node_chk(g, tx, &name, XS_PERM_READ)?;
                let mut out = Vec::new();
                for p in &n.perms {
                    out.extend_from_slice(p.to_string().as_bytes());
                    out.push(0);
                }
                Ok(out)
            }
            XS_WRITE => {
                let v = get_strings(payload);
                let Some(path) = v.first() else {
                    return Err(XsError::EINVAL);
                };
                let data = &payload[path.len() + 1..];
                let name = self.canonicalize(g, path, false)?;
                self.op_write(g, tx, &name, data)?;
                Ok(ok_payload())
            }
            XS_MKDIR => {
                let name = self.canon_onearg(payload, false)?;
                self.op_mkdir(g, tx, &name)?;
                Ok(ok_payload())
            }
            XS_RM => {
                let name = self.canon_onearg(payload, false)?;
                self.op_rm(g, tx, &name)?;
                Ok(ok_payload())
            }
            XS_SET_PERMS => {
                let num = count_strings(payload);
                if num < 2 {
                    return Err(XsError::EINVAL);
                }
                let num = num - 1;
                if num >= quota::PERMS {
                    return Err(XsError::ENOSPC);
                }
                let v = get_strings(payload);
                let mut perms = Vec::with_capacity(num);
                for s in &v[1..=num] {
                    perms.push(parse_perm(s).ok_or(XsError::EINVAL)?);
                }
                let perms = self.mark_unknown_domains(perms, false);
                if perms[0].access & XS_PERM_IGNORE != 0 {
                    return Err(XsError::ENOENT);
                }
                let name = self.canonicalize(g, v[0], true)?;
                self.op_set_perms(g, tx, &name, perms)?;
                Ok(ok_payload())
            }
            XS_UNWATCH => {
                self.op_unwatch(payload)?;
                Ok(ok_payload())
            }
            XS_TRANSACTION_START => {
                let id = self.op_tx_start(tx)?;
                let mut out = id.to_string().into_bytes();
                out.push(0);
                Ok(out)
            }
            XS_TRANSACTION_END => {
                let commit = match onearg(payload) {
                    Some(b"T") => true,
                    Some(b"F") => false,
                    _ => return Err(XsError::EINVAL),
                };
                self.op_tx_end(tx, commit)?;
                Ok(ok_payload())
            }
            XS_GET_DOMAIN_PATH => {
                let arg = onearg(payload).ok_or(XsError::EINVAL)?;
                let (v, end) = c_strtoul10(arg);
                if end != arg.len() || v > 65535 {
                    return Err(XsError::EINVAL);
                }
                let mut out = format!("/local/domain/{v}").into_bytes();
                out.push(0);
                Ok(out)
            }
            XS_RESET_WATCHES => {
                self.watches.clear();
                self.watch_mem = 0;
                self.txns.clear();
                Ok(ok_payload())
            }
            XS_GET_FEATURE => {
                if !get_strings(payload).is_empty() {
                    return Err(XsError::EACCES);
                }
                let mut out = SERVER_FEATURES.to_string().into_bytes();
                out.push(0);
                Ok(out)
            }
            _ => Err(XsError::ENOSYS),
        }
    }

    /// `send_directory_part()`: `<gencnt>|<children from byte offset>`, with an
    /// extra nul once the list is complete.
    fn directory_part(&mut self, tx: Option<u32>, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        if count_strings(payload) != 2 {
            return Err(XsError::EINVAL);
        }
        let v = get_strings(payload);
        let name = self.canonicalize(Who::Guest, v[0], false)?;
        let off = c_atoi(v[1]) as u32 as usize;
        let n = self.get_node_chk(Who::Guest, tx, &name, XS_PERM_READ)?;
        let mut out = n.generation.to_string().into_bytes();
        out.push(0);
        let genlen = out.len();
        let mut children = Vec::with_capacity(n.childlen());
        for c in &n.children {
            children.extend_from_slice(c.as_bytes());
            children.push(0);
        }
        let childlen = children.len();
        if off >= childlen {
            out.push(0);
            return Ok(out);
        }
        let maxlen = XENSTORE_PAYLOAD_MAX - genlen - 1;
        let mut len = 0;
        loop {
            let pos = off + len;
            let slen = children[pos..]
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(childlen - pos);
            if len + slen >= maxlen {
                break;
            }
            len += slen + 1;
            if off + len >= childlen {
                len = childlen - off;
                break;
            }
        }
        out.extend_from_slice(&children[off..off + len]);
        if off + len == childlen {
            out.push(0);
        }
        Ok(out)
    }
}
