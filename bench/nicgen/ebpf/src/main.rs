//! The NIC-like traffic generator's XDP programs.
//!
//! `nicgen` is run by userspace with `BPF_PROG_RUN` in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel hands it page-pool frames one after another and
//! sends what it redirects on as `xdp_frame`s, the way a NIC driver's receive path does. Per
//! frame it keeps `window` flows open at once (round robin over slots), starts a new flow in
//! a slot when the slot's flow has sent all its packets (`Slot::advance`: a flow of linked
//! templates sends them in order), writes the flow's template into the
//! frame, gives the frame the flow's source address (198.18.0.0/15) and source port with
//! the checksums updated incrementally, and redirects it to the configured interface.
//!
//! `relay` redirects every frame that reaches its interface to another interface (its
//! index in `RELAY_TO`): attached to a veth that AF_PACKET sends into, it turns skb delivery
//! into `xdp_frame`s for the next veth's peer, NIC-like delivery on kernels that refuse
//! live-frames mode.
//!
//! `noop` and `array_read` measure, with `BPF_PROG_TEST_RUN` repeat, what one array map
//! read per packet costs (the sensor's trail-set selector is one).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_smp_processor_id, bpf_redirect, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use xtrail_nicgen_common::{GenConfig, Rewrite, Slot, Template, MAX_FRAME, MAX_WINDOW};

#[map]
static CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

/// The templates, sized by userspace.
#[map]
static TEMPLATES: Array<Template> = Array::with_max_entries(1, 0);

/// Per CPU: element 0 counts frames written, element 1 flows started.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Per CPU: the flow each slot is sending.
#[map]
static SLOTS: PerCpuArray<Slot> = PerCpuArray::with_max_entries(MAX_WINDOW, 0);

/// For `array_read`: one u32, like the sensor's `TRAIL_SET`.
#[map]
static ONE_WORD: Array<u32> = Array::with_max_entries(1, 0);

/// For `relay`: the index of the interface every frame is redirected to.
#[map]
static RELAY_TO: Array<u32> = Array::with_max_entries(1, 0);

#[xdp]
pub fn nicgen(ctx: XdpContext) -> u32 {
    generate(&ctx).unwrap_or(xdp_action::XDP_ABORTED)
}

#[inline(always)]
fn generate(ctx: &XdpContext) -> Option<u32> {
    let cfg = *CONFIG.get(0)?;
    let n = COUNTERS.get_ptr_mut(0)?;
    let flows = COUNTERS.get_ptr_mut(1)?;
    // SAFETY: per-CPU slots; only this CPU touches them while the program runs.
    let seq = unsafe {
        let v = *n;
        *n = v + 1;
        v
    };
    let window = if cfg.window == 0 || cfg.window > MAX_WINDOW {
        1
    } else {
        cfg.window
    };
    // `checked_rem`: a remainder the compiler cannot prove safe would link a panic.
    let slot = SLOTS.get_ptr_mut(seq.checked_rem(u64::from(window)).unwrap_or(0) as u32)?;
    // SAFETY: as above (per-CPU).
    let (slot, flows) = unsafe { (&mut *slot, &mut *flows) };
    let index = slot.advance(cfg.templates, flows, |i| {
        TEMPLATES
            .get(i)
            .map(|t| (t.packets, t.follows, t.continues))
    })?;
    let flow = slot.flow;
    let t = TEMPLATES.get(index)?;
    let len = t.len as usize;
    if len == 0 || len > MAX_FRAME {
        return None;
    }
    // Resize the frame to the template's length, then write the template.
    let cur = ctx.data_end() - ctx.data();
    let delta = len as i64 - cur as i64;
    if delta != 0 {
        // SAFETY: the helper checks the new length against the frame's room.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
            return None;
        }
    }
    // SAFETY: `t.data` is a map value of MAX_FRAME bytes and `len` is at most that.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, t.data.as_ptr() as *mut _, len as u32) } != 0 {
        return None;
    }
    if t.l3 != 0 {
        // SAFETY: a helper call without arguments.
        let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
        let Rewrite {
            mut addr,
            mut ip_csum,
            mut port,
            mut l4_csum,
        } = t.rewrite(flow, cpu);
        let l3 = u32::from(t.l3);
        // SAFETY (all four): stack buffers of the stated sizes; the helper checks offsets.
        unsafe {
            if bpf_xdp_store_bytes(ctx.ctx, l3 + 12, addr.as_mut_ptr() as *mut _, 4) != 0
                || bpf_xdp_store_bytes(ctx.ctx, l3 + 10, ip_csum.as_mut_ptr() as *mut _, 2) != 0
                || bpf_xdp_store_bytes(
                    ctx.ctx,
                    u32::from(t.sport_off),
                    port.as_mut_ptr() as *mut _,
                    2,
                ) != 0
            {
                return None;
            }
        }
        if t.csum_off != 0 {
            // SAFETY: as above.
            if unsafe {
                bpf_xdp_store_bytes(
                    ctx.ctx,
                    u32::from(t.csum_off),
                    l4_csum.as_mut_ptr() as *mut _,
                    2,
                )
            } != 0
            {
                return None;
            }
        }
    }
    // SAFETY: a helper call with scalar arguments.
    Some(unsafe { bpf_redirect(cfg.ifindex, 0) } as u32)
}

/// Redirects every frame to the interface in `RELAY_TO` (attached by `xtrail-nicgen relay`).
#[xdp]
pub fn relay(_ctx: XdpContext) -> u32 {
    match RELAY_TO.get(0) {
        // SAFETY: a helper call with scalar arguments.
        Some(&ifindex) if ifindex != 0 => unsafe { bpf_redirect(ifindex, 0) as u32 },
        _ => xdp_action::XDP_ABORTED,
    }
}

/// Does nothing: the floor of a test run.
#[xdp]
pub fn noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every frame: attached by `xtrail-nicgen sink`, the least a receiver can cost (the
/// bench's delivery floor).
#[xdp]
pub fn drop_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// One array map read, as the sensor's program reads its trail-set selector per packet.
#[xdp]
pub fn array_read(_ctx: XdpContext) -> u32 {
    let v = ONE_WORD.get(0).copied().unwrap_or(0);
    // The value decides the verdict, so the read is not optimised away.
    if v == 0xdead_beef {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// On the host this crate is an empty binary; the real programs are built for BPF.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
