//! The disks and NICs of a domain as xenbus devices: [`Vbd`] puts blkback behind the
//! xenbus layer, [`Vif`] netback with its host side (a tap or the user-mode network).
//!
//! What a toolstack writes for each (`libxl`'s device code is the reference for the
//! keys): a vbd's frontend gets `virtual-device` and `device-type`, its backend
//! `params`, `type`, `mode`, `dev`, `removable`, `bootable`, `device-type` and
//! blkback's features; a vif's frontend gets `handle` and `mac`, its backend `handle`,
//! `mac`, `type` and netback's features.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use super::blk::{self, BlkBackend, DiskImage, DiskSpec, Vdev};
use super::grant::GrantAccess;
use super::net::{self, HostNet, Mac, NetBackend, NetSpec};
use super::xenbus::{DataPath, DeviceModel};

/// A virtual block device.
pub struct Vbd {
    image: Arc<DiskImage>,
    vdev: Vdev,
}

impl Vbd {
    /// Opens the image `spec` names, as device `vdev`.
    pub fn open(spec: &DiskSpec, vdev: Vdev) -> Result<Vbd, String> {
        let image = DiskImage::open(spec).map_err(|e| crate::error_chain(&e))?;
        Ok(Vbd {
            image: Arc::new(image),
            vdev,
        })
    }
}

/// Picks each disk's device: the one it names, else the first whole disk (`xvda`,
/// `xvdb`, ...) no other disk uses. Two disks naming the same device are refused.
pub fn assign_vdevs(specs: &[DiskSpec]) -> Result<Vec<Vdev>, String> {
    let mut taken: Vec<u32> = specs
        .iter()
        .filter_map(|s| s.vdev.map(|v| v.devid()))
        .collect();
    let mut sorted = taken.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        let name = specs
            .iter()
            .filter_map(|s| s.vdev)
            .find(|v| v.devid() == w[0])
            .map(|v| v.name())
            .unwrap_or_default();
        return Err(format!("two disks are both {name}"));
    }
    let mut next_disk = 0u32;
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let v = match s.vdev {
            Some(v) => v,
            None => loop {
                let v = Vdev::new(next_disk, 0)
                    .ok_or_else(|| "no free xvd device name is left".to_string())?;
                next_disk += 1;
                // A disk whose partitions are devices of their own is taken as well.
                let used = specs
                    .iter()
                    .filter_map(|s| s.vdev)
                    .any(|u| u.disk() == v.disk());
                if !used && !taken.contains(&v.devid()) {
                    taken.push(v.devid());
                    break v;
                }
            },
        };
        out.push(v);
    }
    Ok(out)
}

impl DeviceModel for Vbd {
    fn kind(&self) -> &'static str {
        "vbd"
    }

    fn devid(&self) -> u32 {
        self.vdev.devid()
    }

    fn name(&self) -> String {
        self.vdev.name()
    }

    fn frontend_keys(&self) -> Vec<(String, String)> {
        vec![
            ("virtual-device".into(), self.vdev.devid().to_string()),
            ("device-type".into(), "disk".into()),
        ]
    }

    fn backend_keys(&self) -> Vec<(String, String)> {
        let ty = match self.image.kind() {
            blk::ImageKind::BlockDevice => "phy",
            blk::ImageKind::File => "file",
        };
        let mut keys = vec![
            ("params".into(), self.image.path().display().to_string()),
            ("type".into(), ty.into()),
            (
                "mode".into(),
                if self.image.read_only() { "r" } else { "w" }.into(),
            ),
            ("dev".into(), self.vdev.name()),
            ("removable".into(), "0".into()),
            ("bootable".into(), "1".into()),
            ("device-type".into(), "disk".into()),
        ];
        keys.extend(blk::backend_keys(&self.image));
        keys
    }

    fn connect(
        &mut self,
        front: &mut dyn FnMut(&str) -> Option<String>,
        grants: Arc<dyn GrantAccess>,
    ) -> Result<Box<dyn DataPath>, String> {
        let front = RefCell::new(front);
        let params = blk::FrontendParams::from_keys(|k| (front.borrow_mut())(k))
            .map_err(|e| crate::error_chain(&e))?;
        let backend = BlkBackend::connect(grants, self.image.clone(), &params)
            .map_err(|e| crate::error_chain(&e))?;
        log::info!(
            "{}: connected ({} ring page(s), persistent grants {})",
            self.vdev.name(),
            params.ring_refs.len(),
            if params.persistent { "on" } else { "off" }
        );
        Ok(Box::new(VbdPath(backend)))
    }
}

struct VbdPath(BlkBackend);

impl DataPath for VbdPath {
    fn serve(&mut self) -> Result<bool, String> {
        self.0.serve().map_err(|e| crate::error_chain(&e))
    }

    fn more(&self) -> bool {
        self.0.more_pending()
    }

    fn disconnect(self: Box<Self>) {
        let s = self.0.stats();
        log::info!(
            "{}: disconnected after {} requests ({} sectors read, {} written, {} errors)",
            self.0.disk().path().display(),
            s.requests,
            s.sectors_read,
            s.sectors_written,
            s.errors
        );
        self.0.disconnect();
    }
}

/// A virtual NIC.
pub struct Vif {
    index: u32,
    mac: Mac,
    /// The host side, while no frontend is connected (a connected data path holds it
    /// and puts it back when the frontend goes).
    host: Arc<Mutex<Option<Box<dyn HostNet>>>>,
}

impl Vif {
    /// Opens the host side `spec` names (attaches the tap, starts passt) for vif
    /// `index`.
    pub fn open(spec: &NetSpec, index: u32) -> Result<Vif, String> {
        let host = spec.host.open().map_err(|e| crate::error_chain(&e))?;
        Ok(Vif {
            index,
            mac: spec.mac.unwrap_or_else(Mac::random_local),
            host: Arc::new(Mutex::new(Some(host))),
        })
    }
}

impl DeviceModel for Vif {
    fn kind(&self) -> &'static str {
        "vif"
    }

    fn devid(&self) -> u32 {
        self.index
    }

    fn name(&self) -> String {
        format!("vif{}", self.index)
    }

    fn frontend_keys(&self) -> Vec<(String, String)> {
        let mut keys = vec![("handle".into(), self.index.to_string())];
        keys.extend(net::frontend_keys(self.mac));
        keys
    }

    fn backend_keys(&self) -> Vec<(String, String)> {
        let mut keys = vec![
            ("handle".into(), self.index.to_string()),
            ("type".into(), "vif".into()),
        ];
        keys.extend(net::backend_keys(self.mac));
        keys
    }

    fn connect(
        &mut self,
        front: &mut dyn FnMut(&str) -> Option<String>,
        grants: Arc<dyn GrantAccess>,
    ) -> Result<Box<dyn DataPath>, String> {
        let front = RefCell::new(front);
        let params = net::FrontendParams::from_keys(|k| (front.borrow_mut())(k))
            .map_err(|e| crate::error_chain(&e))?;
        let host = self
            .host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or("the host side is still held by the previous connection")?;
        let backend = match NetBackend::connect_keeping_host(grants, params, host) {
            Ok(b) => b,
            Err((e, host)) => {
                // The next attempt of the frontend gets the host side again.
                *self.host.lock().unwrap_or_else(|e| e.into_inner()) = Some(host);
                return Err(crate::error_chain(&e));
            }
        };
        log::info!("vif{}: connected, MAC {}", self.index, self.mac);
        Ok(Box::new(VifPath {
            backend: Some(backend),
            host_slot: self.host.clone(),
        }))
    }
}

struct VifPath {
    backend: Option<NetBackend>,
    host_slot: Arc<Mutex<Option<Box<dyn HostNet>>>>,
}

impl DataPath for VifPath {
    fn host_fd(&self) -> Option<RawFd> {
        self.backend.as_ref().map(|b| b.host_fd())
    }

    fn serve(&mut self) -> Result<bool, String> {
        let Some(b) = self.backend.as_mut() else {
            return Ok(false);
        };
        let tx = b.serve_tx().map_err(|e| crate::error_chain(&e))?;
        let rx = b.serve_rx().map_err(|e| crate::error_chain(&e))?;
        b.flush_host().map_err(|e| crate::error_chain(&e))?;
        Ok(tx || rx)
    }

    fn more(&self) -> bool {
        self.backend
            .as_ref()
            .is_some_and(|b| b.tx_more() || b.host_wants_write())
    }

    fn wants_host_input(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| b.wants_host_input())
    }

    fn disconnect(mut self: Box<Self>) {
        if let Some(b) = self.backend.take() {
            let s = b.stats();
            log::info!(
                "vif: disconnected after {} packets out, {} in ({} dropped)",
                s.tx_packets,
                s.rx_packets,
                s.tx_dropped + s.rx_dropped
            );
            let host = b.disconnect();
            *self.host_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> DiskSpec {
        DiskSpec::parse(s).unwrap()
    }

    #[test]
    fn disks_without_a_device_take_the_free_ones_in_order() {
        let v = assign_vdevs(&[spec("a.img"), spec("b.img,vdev=xvda"), spec("c.img")]).unwrap();
        let names: Vec<String> = v.iter().map(|v| v.name()).collect();
        assert_eq!(names, ["xvdb", "xvda", "xvdc"]);
        // Per-partition devices take their disk's letter.
        let v = assign_vdevs(&[
            spec("r.img,vdev=xvda1"),
            spec("s.img,vdev=xvda2"),
            spec("d.img"),
        ])
        .unwrap();
        let names: Vec<String> = v.iter().map(|v| v.name()).collect();
        assert_eq!(names, ["xvda1", "xvda2", "xvdb"]);
        assert_eq!(v[0].devid(), 51713);
        assert!(
            assign_vdevs(&[spec("a.img,vdev=xvdb"), spec("b.img,vdev=xvdb")])
                .unwrap_err()
                .contains("xvdb")
        );
    }
}
