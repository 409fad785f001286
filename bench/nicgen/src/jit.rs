//! A loaded BPF program's JIT image, and `perf` samples counted per instruction of it: a
//! line-level profile of the live XDP program without bpftool (Debian's cannot disassemble
//! JIT images: it is built without libbfd) and without perf's BPF annotation (no libopcodes).
//!
//! [`jit_image`] reads the machine code of each JITed function of a program, its kernel
//! address and the source lines its code starts (`BPF_OBJ_GET_INFO_BY_FD`:
//! `jited_prog_insns`, `jited_ksyms`, `jited_func_lens`, `line_info` with `jited_line_info`;
//! file names and line texts from the string section of the program's BTF; needs root).
//! [`count_samples`] bins the instruction pointers of `perf script -F ip` lines into those
//! functions, and [`annotate`] returns `objdump`'s disassembly of each with the samples of
//! each instruction and of each source line. A sampled instruction pointer is the
//! instruction after the one that stalled (a load's miss shows on the next line).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use aya_obj::generated::{bpf_btf_info, bpf_cmd, bpf_line_info, bpf_prog_info};

/// One JITed function of a program: its kernel address, its machine code and the source
/// lines its code starts (from the program's BTF line info; empty without it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitFunc {
    pub addr: u64,
    pub image: Vec<u8>,
    pub lines: Vec<SourceLine>,
}

/// Where the code of a source line starts in a JITed function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLine {
    /// Offset in the function's machine code.
    pub offset: u32,
    /// "file:line" (the file's last three path components, see `short_path`).
    pub place: String,
    /// The line's text as BTF holds it, trimmed.
    pub text: String,
}

impl JitFunc {
    /// The offset of kernel address `ip` in this function, if it is inside it.
    pub fn offset_of(&self, ip: u64) -> Option<u32> {
        let off = ip.checked_sub(self.addr)?;
        (off < self.image.len() as u64).then_some(off as u32)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("BPF_PROG_GET_FD_BY_ID {0}: {1}")]
    Program(u32, std::io::Error),
    #[error("BPF_OBJ_GET_INFO_BY_FD: {0}")]
    Info(std::io::Error),
    #[error(
        "the program has no JIT image or its addresses are hidden (JIT off, or \
         kernel.kptr_restrict / not root)"
    )]
    NotJited,
    #[error("running objdump: {0} (Debian: binutils)")]
    Objdump(std::io::Error),
    #[error("{0}: {1}")]
    Dump(String, std::io::Error),
    #[error("{0}: not a JIT dump ({1})")]
    BadDump(String, &'static str),
}

/// `BPF_OBJ_GET_INFO_BY_FD` on `fd` (a program's or a BTF object's) into `info`, the
/// kernel's info struct for that object (aya-obj's bindings of it).
///
/// # Safety
/// `T` must be the kernel's info struct for the object type of `fd` (the kernel takes its
/// fields as such, buffer addresses included), and every buffer address in `*info` must be
/// valid for writes of the length or count (times the record size) that `*info` gives for
/// it.
unsafe fn obj_info<T>(fd: i32, info: &mut T) -> Result<(), JitError> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    // SAFETY: `attr` is the command's attribute layout and lives across the call; the
    // kernel writes at most `info_len` bytes into `info`, and into the buffers `info` names
    // what the caller vouched for.
    unsafe { xtrail_common::sys::bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as u32, &mut attr) }
        .map_err(JitError::Info)?;
    Ok(())
}

/// The string section of BTF object `id` (the kernel's copy of a program's BTF), or why not.
fn btf_strings(id: u32) -> Result<Vec<u8>, String> {
    let fd = fd_by_id(bpf_cmd::BPF_BTF_GET_FD_BY_ID, id)
        .map_err(|e| format!("BPF_BTF_GET_FD_BY_ID {id}: {e}"))?;
    let mut head = zeroed_btf_info();
    // SAFETY: `struct bpf_btf_info`; no buffer named (`btf` is 0).
    unsafe { obj_info(fd.as_raw_fd(), &mut head) }.map_err(|e| e.to_string())?;
    let mut raw = vec![0u8; head.btf_size as usize];
    let mut want = zeroed_btf_info();
    want.btf = raw.as_mut_ptr() as u64;
    want.btf_size = head.btf_size;
    // SAFETY: as above; `btf` names `raw`, `btf_size` bytes long.
    unsafe { obj_info(fd.as_raw_fd(), &mut want) }.map_err(|e| e.to_string())?;
    // The header (include/uapi/linux/btf.h): magic, version, flags, hdr_len, then the type
    // and string sections' offsets and lengths after the header.
    let word = |at: usize| {
        raw.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if raw.get(..2) != Some(&0xeb9f_u16.to_le_bytes()[..]) {
        return Err("the BTF's magic is not 0xeb9f (little-endian)".into());
    }
    let (Some(hdr_len), Some(str_off), Some(str_len)) = (word(4), word(16), word(20)) else {
        return Err("the BTF is shorter than its header".into());
    };
    let start = hdr_len + str_off;
    raw.get(start..start + str_len)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "no BTF string section where the header says".into())
}

/// A source file as a place name: its last three path components (`program/src/main.rs`,
/// `aya-ebpf-0.1.1/src/helpers.rs`), so that files of one name in different crates differ.
fn short_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    parts[parts.len().saturating_sub(3)..].join("/")
}

/// A `struct bpf_prog_info` of zeros (what the kernel takes as "nothing asked for").
fn zeroed_prog_info() -> bpf_prog_info {
    // SAFETY: a C struct of integers, byte arrays and a bit-field unit: all zeros is valid.
    unsafe { std::mem::zeroed() }
}

/// A `struct bpf_btf_info` of zeros.
fn zeroed_btf_info() -> bpf_btf_info {
    // SAFETY: a C struct of integers: all zeros is valid.
    unsafe { std::mem::zeroed() }
}

/// The NUL-terminated string at `off` of a BTF string section.
fn btf_str(strings: &[u8], off: u32) -> String {
    let tail = strings.get(off as usize..).unwrap_or_default();
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

/// The JITed functions of loaded program `id`: see [`jit_image_of`].
pub fn jit_image(id: u32) -> Result<JitImage, JitError> {
    let fd = fd_by_id(bpf_cmd::BPF_PROG_GET_FD_BY_ID, id).map_err(|e| JitError::Program(id, e))?;
    jit_image_of(fd.as_fd())
}

/// A descriptor of BPF object `id` by `cmd` (`BPF_PROG_GET_FD_BY_ID`, `BPF_BTF_GET_FD_BY_ID`:
/// both read the id first; the attribute's other words, 0, are fields they require to be 0).
fn fd_by_id(cmd: bpf_cmd, id: u32) -> std::io::Result<OwnedFd> {
    let mut attr: [u32; 4] = [id, 0, 0, 0];
    // SAFETY: both commands read the id (and zeros) from `attr`, which outlives the call.
    let fd = unsafe { xtrail_common::sys::bpf(cmd as u32, &mut attr) }?;
    // SAFETY: a new descriptor the call returned, owned here only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A program's JIT image: its functions, and why they have no source lines if they have
/// none.
#[derive(Debug)]
pub struct JitImage {
    pub funcs: Vec<JitFunc>,
    /// Set when the program's BTF line info could not be read (the image is still whole).
    pub no_lines: Option<String>,
}

/// The JITed functions of the program `prog` (the main program first, then its BPF
/// functions), each with its kernel address and source lines.
pub fn jit_image_of(prog: BorrowedFd<'_>) -> Result<JitImage, JitError> {
    let raw = prog.as_raw_fd();
    let mut head = zeroed_prog_info();
    // SAFETY: `struct bpf_prog_info`; no buffer named.
    unsafe { obj_info(raw, &mut head)? };
    let (len, nfuncs) = (head.jited_prog_len, head.nr_jited_ksyms);
    if len == 0 || nfuncs == 0 || head.nr_jited_func_lens != nfuncs {
        return Err(JitError::NotJited);
    }
    let mut image = vec![0u8; len as usize];
    let mut addrs = vec![0u64; nfuncs as usize];
    let mut lens = vec![0u32; nfuncs as usize];
    // Line info only when the kernel has one JIT address for each record.
    let nlines = if head.nr_jited_line_info == head.nr_line_info
        && head.line_info_rec_size as usize == std::mem::size_of::<bpf_line_info>()
        && head.jited_line_info_rec_size == 8
    {
        head.nr_line_info
    } else {
        0
    };
    let no_line = bpf_line_info {
        insn_off: 0,
        file_name_off: 0,
        line_off: 0,
        line_col: 0,
    };
    let mut line_info = vec![no_line; nlines as usize];
    let mut line_addrs = vec![0u64; nlines as usize];
    let mut want = zeroed_prog_info();
    want.jited_prog_len = len;
    want.jited_prog_insns = image.as_mut_ptr() as u64;
    want.nr_jited_ksyms = nfuncs;
    want.nr_jited_func_lens = nfuncs;
    want.jited_ksyms = addrs.as_mut_ptr() as u64;
    want.jited_func_lens = lens.as_mut_ptr() as u64;
    want.nr_line_info = nlines;
    want.line_info_rec_size = std::mem::size_of::<bpf_line_info>() as u32;
    want.line_info = line_info.as_mut_ptr() as u64;
    want.nr_jited_line_info = nlines;
    want.jited_line_info_rec_size = 8;
    want.jited_line_info = line_addrs.as_mut_ptr() as u64;
    // SAFETY: as above; each buffer named is as long as the length or count given beside it
    // (times the record size given).
    unsafe { obj_info(raw, &mut want)? };
    // Without the right to see kernel addresses the kernel leaves them 0.
    if addrs.contains(&0) || lens.iter().map(|&l| u64::from(l)).sum::<u64>() != u64::from(len) {
        return Err(JitError::NotJited);
    }
    let mut funcs = Vec::with_capacity(addrs.len());
    let mut at = 0usize;
    for (&addr, &n) in addrs.iter().zip(&lens) {
        let end = at + n as usize;
        funcs.push(JitFunc {
            addr,
            image: image[at..end].to_vec(),
            lines: Vec::new(),
        });
        at = end;
    }
    let strings = if head.nr_line_info == 0 || head.btf_id == 0 {
        Err("the program has no BTF line info".to_string())
    } else if nlines == 0 {
        Err("the kernel gives no JIT address for each line info record".to_string())
    } else {
        btf_strings(head.btf_id)
    };
    let strings = match strings {
        Ok(s) => s,
        Err(why) => {
            return Ok(JitImage {
                funcs,
                no_lines: Some(why),
            })
        }
    };
    for (info, &addr) in line_info.iter().zip(&line_addrs) {
        let Some(f) = funcs.iter_mut().find(|f| f.offset_of(addr).is_some()) else {
            continue;
        };
        let file = short_path(&btf_str(&strings, info.file_name_off));
        f.lines.push(SourceLine {
            offset: (addr - f.addr) as u32,
            place: format!("{file}:{}", info.line_col >> 10),
            text: btf_str(&strings, info.line_off).trim().to_string(),
        });
    }
    for f in &mut funcs {
        f.lines.sort_by_key(|l| l.offset);
    }
    Ok(JitImage {
        funcs,
        no_lines: None,
    })
}

/// Writes `funcs` to `dir`: `func-N.bin` (machine code), `funcs.txt` (a line "N ADDR LEN" a
/// function, ADDR in hex) and `lines.txt` (a line "N OFFSET PLACE<tab>TEXT" a source line).
pub fn write_dump(dir: &Path, funcs: &[JitFunc]) -> Result<(), JitError> {
    let err = |p: &Path| {
        let name = p.display().to_string();
        move |e| JitError::Dump(name, e)
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let mut index = String::new();
    for (i, f) in funcs.iter().enumerate() {
        let path = func_file(dir, i);
        std::fs::write(&path, &f.image).map_err(err(&path))?;
        index += &format!("{i} {:x} {}\n", f.addr, f.image.len());
    }
    let path = dir.join("funcs.txt");
    std::fs::write(&path, index).map_err(err(&path))?;
    let mut lines = String::new();
    for (i, f) in funcs.iter().enumerate() {
        for l in &f.lines {
            // Tabs and line breaks in a line's text would break the format.
            let text = l.text.replace(['\t', '\n', '\r'], " ");
            lines += &format!("{i} {} {}\t{text}\n", l.offset, l.place);
        }
    }
    let path = dir.join("lines.txt");
    std::fs::write(&path, lines).map_err(err(&path))
}

/// Function `i`'s machine code in dump `dir`.
fn func_file(dir: &Path, i: usize) -> std::path::PathBuf {
    dir.join(format!("func-{i}.bin"))
}

/// Reads what [`write_dump`] wrote.
pub fn read_dump(dir: &Path) -> Result<Vec<JitFunc>, JitError> {
    let path = dir.join("funcs.txt");
    let name = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| JitError::Dump(name.clone(), e))?;
    let mut funcs = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(i), Some(addr), Some(len), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(JitError::BadDump(name, "a line is not N ADDR LEN"));
        };
        let addr = u64::from_str_radix(addr, 16)
            .map_err(|_| JitError::BadDump(name.clone(), "an address is not hex"))?;
        if i.parse::<usize>().ok() != Some(funcs.len()) {
            return Err(JitError::BadDump(
                name,
                "functions not numbered 0, 1, ... in order",
            ));
        }
        let bin = func_file(dir, funcs.len());
        let image =
            std::fs::read(&bin).map_err(|e| JitError::Dump(bin.display().to_string(), e))?;
        if len.parse::<usize>().ok() != Some(image.len()) {
            return Err(JitError::BadDump(
                name,
                "a function's length differs from its file",
            ));
        }
        funcs.push(JitFunc {
            addr,
            image,
            lines: Vec::new(),
        });
    }
    // Source lines are optional (a program without BTF line info).
    let path = dir.join("lines.txt");
    let lines = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(JitError::Dump(path.display().to_string(), e)),
    };
    let name = path.display().to_string();
    for line in lines.lines() {
        let (head, text) = line.split_once('\t').unwrap_or((line, ""));
        let mut it = head.split_whitespace();
        let (Some(i), Some(offset), Some(place)) = (it.next(), it.next(), it.next()) else {
            return Err(JitError::BadDump(
                name,
                "a line is not N OFFSET PLACE<tab>TEXT",
            ));
        };
        let (Ok(i), Ok(offset)) = (i.parse::<usize>(), offset.parse::<u32>()) else {
            return Err(JitError::BadDump(
                name,
                "a source line's function or offset",
            ));
        };
        let Some(f) = funcs.get_mut(i) else {
            return Err(JitError::BadDump(name, "a source line of no function"));
        };
        f.lines.push(SourceLine {
            offset,
            place: place.to_string(),
            text: text.to_string(),
        });
    }
    Ok(funcs)
}

/// `perf` samples of a program's functions.
#[derive(Debug, Default)]
pub struct Samples {
    /// Per function, samples per instruction offset.
    pub counts: Vec<BTreeMap<u32, u64>>,
    /// Per function, its symbol as perf named it (`bpf_prog_TAG_NAME`), if sampled.
    pub names: Vec<Option<String>>,
    /// Samples read in all, those outside the functions included.
    pub all: u64,
}

/// Samples per function and instruction offset, from `perf script -F ip[,sym...]` lines
/// (the first field of a line, in hex, is the instruction pointer; the second, if any, its
/// symbol).
pub fn count_samples(funcs: &[JitFunc], perf_script: &str) -> Samples {
    let mut s = Samples {
        counts: vec![BTreeMap::new(); funcs.len()],
        names: vec![None; funcs.len()],
        all: 0,
    };
    for line in perf_script.lines() {
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|t| u64::from_str_radix(t, 16).ok()) else {
            continue;
        };
        s.all += 1;
        for (i, f) in funcs.iter().enumerate() {
            if let Some(off) = f.offset_of(ip) {
                *s.counts[i].entry(off).or_insert(0) += 1;
                if s.names[i].is_none() {
                    // perf's name of a JITed BPF function (not "[unknown]").
                    s.names[i] = fields
                        .next()
                        .map(|sym| sym.split("+0x").next().unwrap_or(sym))
                        .filter(|sym| sym.starts_with("bpf_prog_"))
                        .map(str::to_string);
                }
                break;
            }
        }
    }
    s
}

/// `objdump`'s disassembly of the x86-64 machine code in file `bin` (a dump's
/// `func-N.bin`), one (offset, text) an instruction.
pub fn disassemble(bin: &Path) -> Result<Vec<(u32, String)>, JitError> {
    let out = Command::new("objdump")
        .args(["-D", "-b", "binary", "-mi386:x86-64", "--no-show-raw-insn"])
        .arg(bin)
        .stdin(Stdio::null())
        .output()
        .map_err(JitError::Objdump)?;
    if !out.status.success() {
        return Err(JitError::Objdump(std::io::Error::other(format!(
            "objdump exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let (off, rest) = l.split_once(':')?;
            let off = u32::from_str_radix(off.trim(), 16).ok()?;
            Some((off, rest.trim().to_string()))
        })
        .collect())
}

/// The profile as text: samples per function, the `top` hottest instructions of all, then
/// each function with samples disassembled (from the dump in `dir`, which `funcs` were read
/// from), each instruction with its samples and share.
pub fn annotate(
    dir: &Path,
    funcs: &[JitFunc],
    samples: &Samples,
    top: usize,
) -> Result<String, JitError> {
    let counts = &samples.counts;
    let total: u64 = counts.iter().flat_map(|c| c.values()).sum();
    let share = |n: u64| 100.0 * n as f64 / total.max(1) as f64;
    let mut out = format!("{total} samples in the program's {} functions", funcs.len());
    out += &format!(" ({} samples read in all)\n", samples.all);
    let name = |i: usize| samples.names.get(i).cloned().flatten().unwrap_or_default();
    for (i, c) in counts.iter().enumerate() {
        let n: u64 = c.values().sum();
        out += &format!("function {i}: {n} samples ({:.1}%) {}\n", share(n), name(i));
    }
    let listings = counts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if c.is_empty() {
                Ok(Vec::new())
            } else {
                disassemble(&func_file(dir, i))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let text_of = |i: usize, off: u32| {
        listings[i]
            .iter()
            .find(|(o, _)| *o == off)
            .map_or("(not an instruction start)", |(_, t)| t.as_str())
    };
    // The source line whose code holds offset `off` of function `i`: the last to start at or
    // before it.
    let line_of = |i: usize, off: u32| {
        let lines = &funcs[i].lines;
        let n = lines.partition_point(|l| l.offset <= off);
        n.checked_sub(1).map(|k| &lines[k])
    };
    let mut hottest: Vec<(u64, usize, u32)> = counts
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.iter().map(move |(&off, &n)| (n, i, off)))
        .collect();
    hottest.sort_by(|a, b| b.cmp(a));
    out += &format!("\nhottest {top} (the stall is usually the instruction before):\n");
    for &(n, i, off) in hottest.iter().take(top) {
        let place = line_of(i, off).map_or("", |l| l.place.as_str());
        out += &format!(
            "{n:>8} {:>5.1}%  f{i}+{off:#06x}  {:<40} {place}\n",
            share(n),
            text_of(i, off)
        );
    }
    if funcs.iter().any(|f| !f.lines.is_empty()) {
        // By source line (file and line number): every instruction's samples on the line
        // whose code holds it.
        let mut by_line: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
        for (i, c) in counts.iter().enumerate() {
            for (&off, &n) in c {
                if let Some(l) = line_of(i, off) {
                    by_line
                        .entry(l.place.as_str())
                        .or_insert((0, l.text.as_str()))
                        .0 += n;
                }
            }
        }
        let mut by_line: Vec<_> = by_line.into_iter().collect();
        by_line.sort_by_key(|&(_, (n, _))| std::cmp::Reverse(n));
        out += &format!("\nhottest {top} source lines:\n");
        for (place, (n, text)) in by_line.into_iter().take(top) {
            out += &format!("{n:>8} {:>5.1}%  {place:<24} {text}\n", share(n));
        }
    }
    for (i, c) in counts.iter().enumerate() {
        if c.is_empty() {
            continue;
        }
        out += &format!("\nfunction {i} at {:#x}: {}\n", funcs[i].addr, name(i));
        let mut last = None;
        for (off, text) in &listings[i] {
            if let Some(l) = line_of(i, *off) {
                if last != Some(l.offset) {
                    out += &format!("{:>14}  ; {} {}\n", "", l.place, l.text);
                    last = Some(l.offset);
                }
            }
            let n = c.get(off).copied().unwrap_or(0);
            let mark = if n == 0 {
                String::new()
            } else {
                format!("{n} {:.1}%", share(n))
            };
            out += &format!("{mark:>14}  {off:#06x}  {text}\n");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn funcs() -> Vec<JitFunc> {
        vec![
            JitFunc {
                addr: 0xffff_ffff_c000_0000,
                // push %rbp; mov %rsp,%rbp; xor %eax,%eax; leave; ret
                image: vec![0x55, 0x48, 0x89, 0xe5, 0x31, 0xc0, 0xc9, 0xc3],
                lines: vec![
                    SourceLine {
                        offset: 0,
                        place: "main.rs:10".into(),
                        text: "fn f() -> u32 {".into(),
                    },
                    SourceLine {
                        offset: 4,
                        place: "main.rs:11".into(),
                        text: "0".into(),
                    },
                ],
            },
            JitFunc {
                addr: 0xffff_ffff_c000_1000,
                image: vec![0xc3],
                lines: Vec::new(),
            },
        ]
    }

    #[test]
    fn samples_are_binned_by_function_and_offset() {
        let perf = "ffffffffc0000001 [unknown]\n\
                    ffffffffc0000004 bpf_prog_x_xtrail_xdp+0x4\n\
                    ffffffffc0000004 bpf_prog_x_xtrail_xdp+0x4\n\
                    ffffffffc0001000 bpf_prog_x_f\n\
                    ffffffffc0000008 past the first function's end\n\
                    ffffffff81000000 pv_native_safe_halt\n\
                    not a sample\n";
        let s = count_samples(&funcs(), perf);
        assert_eq!(s.all, 6);
        assert_eq!(s.counts[0], BTreeMap::from([(1, 1), (4, 2)]));
        assert_eq!(s.counts[1], BTreeMap::from([(0, 1)]));
        let names = [
            Some("bpf_prog_x_xtrail_xdp".into()),
            Some("bpf_prog_x_f".into()),
        ];
        assert_eq!(s.names, names);
    }

    #[test]
    fn source_files_are_named_by_their_last_three_components() {
        let aya = "/root/.cargo/registry/src/x/aya-ebpf-0.1.1/src/helpers.rs";
        assert_eq!(short_path(aya), "aya-ebpf-0.1.1/src/helpers.rs");
        assert_eq!(short_path("src/main.rs"), "src/main.rs");
        assert_eq!(short_path(""), "");
    }

    #[test]
    fn a_dump_reads_back_and_a_short_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("xtrail-jit-{}", std::process::id()));
        write_dump(&dir, &funcs()).unwrap();
        assert_eq!(read_dump(&dir).unwrap(), funcs());
        std::fs::write(dir.join("func-1.bin"), b"").unwrap();
        assert!(matches!(read_dump(&dir), Err(JitError::BadDump(_, _))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_annotation_names_the_hottest_instruction() {
        let samples = count_samples(
            &funcs(),
            "ffffffffc0000004 a\nffffffffc0000004 a\nffffffffc0000001 a\n",
        );
        let dir = std::env::temp_dir().join(format!("xtrail-jit-annotate-{}", std::process::id()));
        write_dump(&dir, &funcs()).unwrap();
        let text = annotate(&dir, &funcs(), &samples, 2).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            text.starts_with("3 samples in the program's 2 functions"),
            "{text}"
        );
        let hottest = text
            .lines()
            .skip_while(|l| !l.starts_with("hottest"))
            .nth(1);
        let hottest = hottest.unwrap_or_default();
        assert!(
            hottest.contains("66.7%")
                && hottest.contains("f0+0x0004")
                && hottest.contains("xor")
                && hottest.contains("main.rs:11"),
            "{text}"
        );
        // The instruction at 1 is in line 10's code, 4 in line 11's.
        let lines = text
            .lines()
            .skip_while(|l| !l.starts_with("hottest 2 source"));
        let lines: Vec<&str> = lines.skip(1).take(2).collect();
        assert!(
            lines[0].contains("main.rs:11") && lines[0].contains("66.7%"),
            "{text}"
        );
        assert!(
            lines[1].contains("main.rs:10") && lines[1].contains("33.3%"),
            "{text}"
        );
        assert!(text.contains("; main.rs:11 0\n"), "{text}");
    }
}
