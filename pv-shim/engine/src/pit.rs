//! The port space a PV domain without I/O ports sees, as Xen answers it
//! (`guest_io_read`/`guest_io_write` in `xen/arch/x86/pv/emul-priv-op.c`): ports 0x42,
//! 0x43 and 0x61 reach an emulated PIT (`pv_pit_handler`, `xen/arch/x86/emul-i8254.c`:
//! every domain gets one, "for video BIOSes to use"); any other port reads all ones and
//! drops writes. Accesses wider than a byte go port by port, as Xen's loop does.
//!
//! Only channel 2 has a data port a PV guest reaches (0x42), gated by bit 0 of port 0x61,
//! whose bit 5 shows the channel's output: what Linux's `quick_pit_calibrate` and
//! `pit_calibrate_tsc` use. The control port (0x43) programs any channel and takes the
//! counter-latch and read-back commands. The count runs at 1.193182 MHz on the domain's
//! system time. As in Xen's model: binary counting only (the BCD bit is kept but not
//! used); a gate's rising edge restarts modes 1, 2, 3 and 5; a low gate does not pause
//! modes 0 and 4; a read of port 0x43 answers 0.
//!
//! Without it (all ones at 0x42) Linux on a CPU without CPUID leaf 0x15/0x16 frequencies
//! (AMD) spends 100,000 reads in `quick_pit_calibrate` before giving up, one trap each.

/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// Ports the emulated PIT answers.
pub mod port {
    /// Channel 2's data port.
    pub const CHANNEL2: u16 = 0x42;
    /// The mode/command port.
    pub const CONTROL: u16 = 0x43;
    /// The system control port B: channel 2's gate (bit 0), the speaker (bit 1), the
    /// refresh toggle (bit 4) and channel 2's output (bit 5).
    pub const SPEAKER: u16 = 0x61;
}

/// Which byte of the 16-bit count the next access of a channel's data port moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// The low byte only (access mode 1).
    Lsb,
    /// The high byte only (access mode 2).
    Msb,
    /// The low byte, then the high byte (access mode 3, first half).
    Word0,
    /// The high byte of a word access.
    Word1,
}

impl Access {
    /// The state a control word's access mode (1-3) starts in.
    fn from_mode(rw: u8) -> Self {
        match rw {
            1 => Self::Lsb,
            2 => Self::Msb,
            _ => Self::Word0,
        }
    }
}

/// One counter.
#[derive(Clone, Copy, Debug)]
struct Channel {
    /// The reload value, 1..=0x10000 (a written 0 counts 65536).
    count: u32,
    /// When it was loaded (or restarted by its gate), in domain system time (ns).
    loaded_at: u64,
    /// Operating mode 0-5.
    mode: u8,
    bcd: bool,
    /// Access mode of the last control word (1 LSB, 2 MSB, 3 LSB then MSB).
    rw: u8,
    read: Access,
    write: Access,
    /// The low byte of a word being written.
    write_lsb: u8,
    /// A latched count and the part of it still to read.
    latched: Option<(u16, Access)>,
    /// A latched status byte (read-back command).
    status: Option<u8>,
    gate: bool,
}

impl Channel {
    /// A channel as after reset: mode 0, word access, count 65536 loaded at time 0.
    const RESET: Self = Self {
        count: 0x1_0000,
        loaded_at: 0,
        mode: 0,
        bcd: false,
        rw: 3,
        read: Access::Word0,
        write: Access::Word0,
        write_lsb: 0,
        latched: None,
        status: None,
        gate: false,
    };

    /// Input clock ticks since the count was loaded.
    fn ticks(&self, now: u64) -> u64 {
        let ns = now.saturating_sub(self.loaded_at);
        (u128::from(ns) * u128::from(PIT_HZ) / 1_000_000_000) as u64
    }

    /// The counting element's value now.
    fn current(&self, now: u64) -> u16 {
        let d = self.ticks(now);
        let count = u64::from(self.count);
        let value = match self.mode {
            // One-shot modes count down once, through 0, wrapping.
            0 | 1 | 4 | 5 => count.wrapping_sub(d) & 0xffff,
            // The square wave counts by two, twice per period.
            3 => count - (2 * d) % count,
            _ => count - d % count,
        };
        value as u16
    }

    /// The channel's OUT line now.
    fn out(&self, now: u64) -> bool {
        let d = self.ticks(now);
        let count = u64::from(self.count);
        match self.mode {
            0 => d >= count,
            1 => d < count,
            2 => d.is_multiple_of(count) && d != 0,
            3 => d % count < count.div_ceil(2),
            _ => d == count,
        }
    }

    fn load(&mut self, value: u16, now: u64) {
        self.count = if value == 0 {
            0x1_0000
        } else {
            u32::from(value)
        };
        self.loaded_at = now;
    }

    fn latch_count(&mut self, now: u64) {
        if self.latched.is_none() {
            self.latched = Some((self.current(now), Access::from_mode(self.rw)));
        }
    }

    fn latch_status(&mut self, now: u64) {
        if self.status.is_none() {
            self.status = Some(
                u8::from(self.out(now)) << 7
                    | (self.rw << 4)
                    | (self.mode << 1)
                    | u8::from(self.bcd),
            );
        }
    }

    fn read_data(&mut self, now: u64) -> u8 {
        if let Some(status) = self.status.take() {
            return status;
        }
        if let Some((value, part)) = self.latched {
            let [lo, hi] = value.to_le_bytes();
            return match part {
                Access::Word0 => {
                    self.latched = Some((value, Access::Msb));
                    lo
                }
                Access::Msb | Access::Word1 => {
                    self.latched = None;
                    hi
                }
                Access::Lsb => {
                    self.latched = None;
                    lo
                }
            };
        }
        let [lo, hi] = self.current(now).to_le_bytes();
        match self.read {
            Access::Lsb => lo,
            Access::Msb => hi,
            Access::Word0 => {
                self.read = Access::Word1;
                lo
            }
            Access::Word1 => {
                self.read = Access::Word0;
                hi
            }
        }
    }

    fn write_data(&mut self, value: u8, now: u64) {
        match self.write {
            Access::Lsb => self.load(u16::from(value), now),
            Access::Msb => self.load(u16::from(value) << 8, now),
            Access::Word0 => {
                self.write_lsb = value;
                self.write = Access::Word1;
            }
            Access::Word1 => {
                self.load(u16::from_le_bytes([self.write_lsb, value]), now);
                self.write = Access::Word0;
            }
        }
    }

    fn set_gate(&mut self, high: bool, now: u64) {
        // A rising edge restarts the gate-triggered and the periodic modes.
        if high && !self.gate && matches!(self.mode, 1 | 2 | 3 | 5) {
            self.loaded_at = now;
        }
        self.gate = high;
    }
}

/// The domain's PIT (Xen's `d->arch.vpit`).
#[derive(Clone, Copy, Debug)]
pub struct Pit {
    channels: [Channel; 3],
    /// Port 0x61 bit 1 as last written.
    speaker_data: bool,
}

impl Default for Pit {
    fn default() -> Self {
        Self::RESET
    }
}

impl Pit {
    /// The PIT as a new domain has it.
    pub const RESET: Self = Self {
        channels: [Channel::RESET; 3],
        speaker_data: false,
    };

    /// A one-byte read of `port` (one of [`port`]) at domain system time `now` (ns).
    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        match port {
            port::CHANNEL2 => self.channels[2].read_data(now),
            port::SPEAKER => {
                let ch = &self.channels[2];
                u8::from(ch.out(now)) << 5
                    | u8::from((now >> 14) & 1 == 1) << 4
                    | u8::from(self.speaker_data) << 1
                    | u8::from(ch.gate)
            }
            // Xen's emulation leaves a read of the control port at the 0 it starts from.
            _ => 0,
        }
    }

    /// A one-byte write of `value` to `port` (one of [`port`]) at domain system time `now`.
    pub fn write(&mut self, port: u16, value: u8, now: u64) {
        match port {
            port::CHANNEL2 => self.channels[2].write_data(value, now),
            port::SPEAKER => {
                self.speaker_data = value & 2 != 0;
                self.channels[2].set_gate(value & 1 != 0, now);
            }
            port::CONTROL => self.control(value, now),
            _ => {}
        }
    }

    fn control(&mut self, value: u8, now: u64) {
        let select = value >> 6;
        if select == 3 {
            // Read-back: bits 1-3 pick channels; bit 5 clear latches counts, bit 4 clear
            // latches status.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) != 0 {
                    if value & 0x20 == 0 {
                        ch.latch_count(now);
                    }
                    if value & 0x10 == 0 {
                        ch.latch_status(now);
                    }
                }
            }
            return;
        }
        let ch = &mut self.channels[usize::from(select)];
        let rw = (value >> 4) & 3;
        if rw == 0 {
            ch.latch_count(now);
            return;
        }
        ch.rw = rw;
        ch.read = Access::from_mode(rw);
        ch.write = Access::from_mode(rw);
        // Modes 6 and 7 are modes 2 and 3.
        ch.mode = match (value >> 1) & 7 {
            m @ 6..=7 => m - 4,
            m => m,
        };
        ch.bcd = value & 1 != 0;
    }
}

/// Whether `port` is one the emulated PIT answers.
pub fn is_pit_port(port: u16) -> bool {
    matches!(port, port::CHANNEL2 | port::CONTROL | port::SPEAKER)
}

/// A read of `width` (1, 2 or 4) bytes from `port` by a domain with no I/O ports, port
/// by port: the PIT's ports from `pit`, all ones elsewhere.
pub fn port_in(pit: &mut Pit, port: u16, width: u8, now: u64) -> u32 {
    (0..u16::from(width.clamp(1, 4))).fold(0, |acc, i| {
        let p = port.wrapping_add(i);
        let byte = if is_pit_port(p) {
            pit.read(p, now)
        } else {
            0xff
        };
        acc | u32::from(byte) << (8 * i)
    })
}

/// A write of the low `width` bytes of `value` to `port`, port by port: the PIT's ports
/// take theirs, the others none.
pub fn port_out(pit: &mut Pit, port: u16, width: u8, value: u32, now: u64) {
    for i in 0..u16::from(width.clamp(1, 4)) {
        let p = port.wrapping_add(i);
        if is_pit_port(p) {
            pit.write(p, (value >> (8 * i)) as u8, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    /// Linux's `quick_pit_calibrate` set-up: gate high, speaker off; channel 2, LSB then
    /// MSB, mode 0; count 0xffff.
    fn calibration_setup(pit: &mut Pit, now: u64) {
        let b = pit.read(port::SPEAKER, now);
        pit.write(port::SPEAKER, (b & !2) | 1, now);
        pit.write(port::CONTROL, 0xb0, now);
        pit.write(port::CHANNEL2, 0xff, now);
        pit.write(port::CHANNEL2, 0xff, now);
    }

    fn read_word(pit: &mut Pit, now: u64) -> u16 {
        let lo = pit.read(port::CHANNEL2, now);
        let hi = pit.read(port::CHANNEL2, now);
        u16::from_le_bytes([lo, hi])
    }

    #[test]
    fn channel_2_counts_down_at_the_pit_rate_from_the_load() {
        let mut pit = Pit::RESET;
        let t0 = 5_000_000;
        calibration_setup(&mut pit, t0);
        assert_eq!(read_word(&mut pit, t0), 0xffff);
        // 1 ms is 1193 ticks.
        assert_eq!(read_word(&mut pit, t0 + 1_000 * US), 0xffff - 1193);
        // The MSB Linux waits for changes every 256 ticks (~214.6 us).
        assert_eq!(read_word(&mut pit, t0 + 215 * US) >> 8, 0xfe);
        // Mode 0 wraps through 0 and goes on; OUT goes high at terminal count.
        assert_eq!(pit.read(port::SPEAKER, t0) & 0x20, 0);
        let past = t0 + 60 * 1_000 * US;
        assert_ne!(pit.read(port::SPEAKER, past) & 0x20, 0);
        assert_eq!(
            pit.read(port::SPEAKER, past) & 3,
            1,
            "gate high, speaker off"
        );
    }

    #[test]
    fn latches_hold_the_count_until_read() {
        let mut pit = Pit::RESET;
        calibration_setup(&mut pit, 0);
        pit.write(port::CONTROL, 0x80, 100 * US); // latch channel 2
        let held = read_word(&mut pit, 900 * US);
        assert_eq!(held, 0xffff - 119, "the count at 100 us, not 900 us");
        assert_eq!(read_word(&mut pit, 900 * US), 0xffff - 1073);
        // Read-back of channel 2's status and count: status first.
        pit.write(port::CONTROL, 0xc8, 200 * US);
        assert_eq!(
            pit.read(port::CHANNEL2, 300 * US),
            0x30,
            "OUT low, LSB+MSB, mode 0"
        );
        assert_eq!(read_word(&mut pit, 300 * US), 0xffff - 238);
    }

    #[test]
    fn byte_access_modes_and_periodic_modes() {
        let mut pit = Pit::RESET;
        // Channel 2, LSB only, mode 2 (rate generator), count 100: reads the LSB only.
        pit.write(port::CONTROL, 0x94, 0);
        pit.write(port::CHANNEL2, 100, 0);
        pit.write(port::SPEAKER, 1, 0);
        let after = |ticks: u64| ticks * 1_000_000_000 / PIT_HZ + 1;
        assert_eq!(pit.read(port::CHANNEL2, after(30)), 70);
        assert_eq!(pit.read(port::CHANNEL2, after(130)), 70, "periodic");
        // Mode 7 is mode 3, MSB only: a write loads value << 8.
        pit.write(port::CONTROL, 0xae, 0);
        pit.write(port::CHANNEL2, 2, 0);
        pit.write(port::CONTROL, 0xe8, 0); // read-back: channel 2's status only
        assert_eq!(pit.read(port::CHANNEL2, 0) & 0x3e, 0x20 | 3 << 1);
        // A count of 0 counts 65536.
        pit.write(port::CONTROL, 0xb0, 0);
        pit.write(port::CHANNEL2, 0, 0);
        pit.write(port::CHANNEL2, 0, 0);
        assert_eq!(read_word(&mut pit, after(1)), 0xffff);
    }

    #[test]
    fn a_rising_gate_restarts_a_periodic_channel() {
        let mut pit = Pit::RESET;
        pit.write(port::CONTROL, 0xb4, 0); // channel 2, word, mode 2
        pit.write(port::CHANNEL2, 0x10, 0);
        pit.write(port::CHANNEL2, 0x27, 0); // 10000
        pit.write(port::SPEAKER, 0, 0);
        pit.write(port::SPEAKER, 1, 1_000 * US);
        assert_eq!(read_word(&mut pit, 1_000 * US), 10000);
    }

    #[test]
    fn other_ports_read_all_ones_and_wide_accesses_go_byte_by_byte() {
        let mut pit = Pit::RESET;
        assert_eq!(port_in(&mut pit, 0x80, 1, 0), 0xff);
        assert_eq!(port_in(&mut pit, 0x3f8, 4, 0), 0xffff_ffff);
        // 0x40 and 0x41 are not reachable; 0x42 is the count's LSB, 0x43 reads 0.
        calibration_setup(&mut pit, 0);
        assert_eq!(port_in(&mut pit, 0x40, 4, 0), 0x00ff_ffff);
        assert_eq!(port_in(&mut pit, 0x42, 1, 0), 0xff, "then the MSB");
        // A word write to 0x42 writes 0x42 and 0x43: the second byte is a control word.
        port_out(&mut pit, 0x42, 2, 0xb0_00, 0);
        port_out(&mut pit, 0x80, 4, 0, 0);
        assert_eq!(pit.channels[2].write, Access::Word0);
    }
}
