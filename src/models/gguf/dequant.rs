//! ggml tensor types and their dequantization to f32, block by block.
//!
//! The block layouts are ggml's (`ggml-common.h`): a block of 32 (or, for the K-quants, a
//! super-block of 256) values stores small integers and one or more f16 scales. Decoding is
//! exact in f32 — `d · q` and `d · q + m` are computed as llama.cpp's reference and the
//! `gguf` Python package do — so the only precision lost is the quantization itself.

use half::{bf16, f16};

/// The tensor types burn-ipa reads. The discriminants are ggml's type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32 = 0,
    /// 16-bit float.
    F16 = 1,
    /// 32 values: f16 scale `d`, 4-bit `q`; `x = d · (q − 8)`.
    Q4_0 = 2,
    /// 32 values: f16 scale `d` and min `m`, 4-bit `q`; `x = d · q + m`.
    Q4_1 = 3,
    /// 32 values: f16 `d`, 5-bit `q` (high bits packed apart); `x = d · (q − 16)`.
    Q5_0 = 6,
    /// 32 values: f16 `d` and `m`, 5-bit `q`; `x = d · q + m`.
    Q5_1 = 7,
    /// 32 values: f16 `d`, 8-bit signed `q`; `x = d · q`.
    Q8_0 = 8,
    /// 256 values in 8 sub-blocks of 32 with 6-bit scales and mins; 4-bit `q`.
    Q4K = 12,
    /// As Q4_K with a fifth bit per value.
    Q5K = 13,
    /// 256 values in 16 sub-blocks of 16 with 8-bit scales; 6-bit `q`.
    Q6K = 14,
    /// bfloat16.
    BF16 = 30,
}

/// The names of every ggml type id, for messages about types burn-ipa does not read.
const GGML_TYPE_NAMES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// Values per K-quant super-block.
const QK_K: usize = 256;

impl GgmlType {
    /// Every supported type.
    pub const ALL: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// The type with ggml id `id`, if burn-ipa reads it.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's id of the type.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name of the type (`Q4_K`).
    pub fn name(self) -> &'static str {
        type_name(self.id()).unwrap_or("?")
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 2 + 16,
            GgmlType::Q4_1 => 2 + 2 + 16,
            GgmlType::Q5_0 => 2 + 4 + 16,
            GgmlType::Q5_1 => 2 + 2 + 4 + 16,
            GgmlType::Q8_0 => 2 + 32,
            GgmlType::Q4K => 2 + 2 + 12 + QK_K / 2,
            GgmlType::Q5K => 2 + 2 + 12 + QK_K / 8 + QK_K / 2,
            GgmlType::Q6K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// Bytes that `elements` values take, `None` when they are not whole blocks.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        let block = self.block_size() as u64;
        elements
            .is_multiple_of(block)
            .then(|| elements / block * self.type_size() as u64)
    }
}

/// ggml's name of type id `id`, for any type ggml defines.
pub fn type_name(id: u32) -> Option<&'static str> {
    GGML_TYPE_NAMES
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, name)| *name)
}

/// Decodes `bytes` of type `ty` into `out`, which must hold exactly the values the bytes
/// encode; the error says how the sizes disagree.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (block, size) = (ty.block_size(), ty.type_size());
    if !out.len().is_multiple_of(block) || bytes.len() != out.len() / block * size {
        return Err(format!(
            "{} bytes of {} do not hold {} values ({} bytes per {} values)",
            bytes.len(),
            ty.name(),
            out.len(),
            size,
            block
        ));
    }
    let blocks = bytes.chunks_exact(size).zip(out.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, o)| o[0] = f16_at(b, 0)),
        GgmlType::BF16 => {
            blocks.for_each(|(b, o)| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| q4_0(b, o)),
        GgmlType::Q4_1 => blocks.for_each(|(b, o)| q4_1(b, o)),
        GgmlType::Q5_0 => blocks.for_each(|(b, o)| q5_0(b, o)),
        GgmlType::Q5_1 => blocks.for_each(|(b, o)| q5_1(b, o)),
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| q8_0(b, o)),
        GgmlType::Q4K => blocks.for_each(|(b, o)| q4_k(b, o)),
        GgmlType::Q5K => blocks.for_each(|(b, o)| q5_k(b, o)),
        GgmlType::Q6K => blocks.for_each(|(b, o)| q6_k(b, o)),
    }
    Ok(())
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

// In the 32-value types, byte j of `qs` holds value j in its low nibble and value j + 16 in
// its high nibble; Q5's fifth bits are bit j of the little-endian u32 `qh`.

fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        o[j] = d * ((q & 0x0f) as i32 - 8) as f32;
        o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        o[j] = d * (q & 0x0f) as f32 + m;
        o[j + 16] = d * (q >> 4) as f32 + m;
    }
}

fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let lo = (q & 0x0f) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * (lo as i32 - 16) as f32;
        o[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let lo = (q & 0x0f) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * lo as f32 + m;
        o[j + 16] = d * hi as f32 + m;
    }
}

fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..34].iter().enumerate() {
        o[j] = d * (q as i8) as f32;
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K/Q5_K: 6 bits
/// each, the first four in the low bits of bytes 0..8, the last four split across bytes
/// 8..12 and the top bits of bytes 0..8.
fn scale_min_k4(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

// Q4_K: d, dmin (f16), 12 bytes of scales/mins, 128 bytes of nibbles. Each 64 values use
// 32 bytes: the low nibbles are the first 32 values, the high nibbles the next 32.
fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        for (half, shift) in [(0, 0), (1, 4)] {
            let (sc, m) = scale_min_k4(scales, 2 * chunk + half);
            let (scale, min) = (d * sc as f32, dmin * m as f32);
            let out = &mut o[chunk * 64 + half * 32..chunk * 64 + half * 32 + 32];
            for (x, &byte) in out.iter_mut().zip(q) {
                *x = scale * ((byte >> shift) & 0x0f) as f32 - min;
            }
        }
    }
}

// Q5_K: as Q4_K, plus 32 bytes `qh` whose bit `2·chunk + half` of byte l is the fifth bit
// of value l of that 32-value run.
fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        for (half, shift) in [(0, 0), (1, 4)] {
            let sub = 2 * chunk + half;
            let (sc, m) = scale_min_k4(scales, sub);
            let (scale, min) = (d * sc as f32, dmin * m as f32);
            let out = &mut o[sub * 32..sub * 32 + 32];
            for (l, x) in out.iter_mut().enumerate() {
                let v = ((q[l] >> shift) & 0x0f) | (((qh[l] >> sub) & 1) << 4);
                *x = scale * v as f32 - min;
            }
        }
    }
}

// Q6_K: 128 bytes of low nibbles `ql`, 64 bytes of high 2-bit pairs `qh`, 16 signed 8-bit
// scales, f16 d. Each half (128 values) uses 64 bytes of ql, 32 of qh and 8 scales; within
// it, value l + 32·k (k = 0..4) takes nibble (k / 2) of ql[l + 32·(k % 2)] and bits 2k..2k+2
// of qh[l], minus 32.
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for half in 0..2 {
        let (ql, qh) = (
            &ql[half * 64..half * 64 + 64],
            &qh[half * 32..half * 32 + 32],
        );
        let sc = &sc[half * 8..half * 8 + 8];
        let out = &mut o[half * 128..half * 128 + 128];
        for l in 0..32 {
            for k in 0..4 {
                let low = (ql[l + 32 * (k % 2)] >> (4 * (k / 2))) & 0x0f;
                let high = (qh[l] >> (2 * k)) & 3;
                let q = (low | (high << 4)) as i32 - 32;
                // Sub-blocks of 16 values: value l + 32k is in sub-block 2k + l / 16.
                let scale = d * (sc[2 * k + l / 16] as i8) as f32;
                out[l + 32 * k] = scale * q as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn sizes_are_ggmls() {
        // ggml's `type_size` / `blck_size` for each type.
        let expected = [
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q4K, 256, 144),
            (GgmlType::Q5K, 256, 176),
            (GgmlType::Q6K, 256, 210),
        ];
        for (ty, block, size) in expected {
            assert_eq!((ty.block_size(), ty.type_size()), (block, size), "{ty:?}");
        }
        assert_eq!(GgmlType::from_id(12), Some(GgmlType::Q4K));
        assert_eq!(GgmlType::from_id(16), None);
        assert_eq!(type_name(16), Some("IQ2_XXS"));
    }

    #[test]
    fn q8_0_by_hand() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16_bytes(0.5));
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut out).unwrap();
        for (j, x) in out.iter().enumerate() {
            assert_eq!(*x, 0.5 * (j as f32 - 16.0));
        }
    }

    #[test]
    fn q4_1_by_hand() {
        // Byte j: low nibble j % 16 (value j), high nibble 15 - j % 16 (value j + 16).
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16_bytes(0.25));
        b[2..4].copy_from_slice(&f16_bytes(-1.0));
        for j in 0..16 {
            b[4 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 0.25 * j as f32 - 1.0);
            assert_eq!(out[j + 16], 0.25 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q5_0_fifth_bit_by_hand() {
        // All nibbles 0; the fifth bit set for values 0 and 31 only: those are 16 − 16 = 0,
        // the others 0 − 16.
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&f16_bytes(1.0));
        b[2..6].copy_from_slice(&(1u32 | 1 << 31).to_le_bytes());
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q5_0, &b, &mut out).unwrap();
        for (j, x) in out.iter().enumerate() {
            let want = if j == 0 || j == 31 { 0.0 } else { -16.0 };
            assert_eq!(*x, want, "value {j}");
        }
    }

    #[test]
    fn q4_k_scales_by_hand() {
        // d = 1, dmin = 0.5; sub-block j gets scale j + 1 and min j; every nibble is 3.
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&f16_bytes(1.0));
        b[2..4].copy_from_slice(&f16_bytes(0.5));
        let (sc, mn): (Vec<u8>, Vec<u8>) = (0..8u8).map(|j| (j + 1, j)).unzip();
        let s = &mut b[4..16];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
        }
        b[16..].fill(0x33);
        let mut out = [0f32; 256];
        dequantize(GgmlType::Q4K, &b, &mut out).unwrap();
        for (i, x) in out.iter().enumerate() {
            let j = i / 32;
            assert_eq!(*x, (j + 1) as f32 * 3.0 - 0.5 * j as f32, "value {i}");
        }
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let mut out = [0f32; 32];
        let err = dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out).unwrap_err();
        assert!(err.contains("33 bytes of Q8_0"), "{err}");
    }
}
