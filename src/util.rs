//! Small parts several modules share and none owns: the xorshift step behind the demo app's
//! chances and the tests' reproducible sequences, and the hex digits of request ids and log
//! escapes. A leaf: it imports nothing of baton.

/// One step of xorshift64 (Marsaglia's 13, 7, 17): fast, no state beyond the word, and the
/// same sequence for a seed on every machine, so a failing property test replays from its seed.
/// Zero stays zero: seed with anything else.
pub(crate) const fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A reproducible sequence for the property tests: [`xorshift`] from a seed.
#[cfg(test)]
pub(crate) struct Rng(pub u64);

#[cfg(test)]
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = xorshift(self.0);
        self.0
    }

    /// Below `n` (not quite uniform: good enough for choosing test steps).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An index into something `len` long.
    pub(crate) fn index(&mut self, len: usize) -> usize {
        (self.next() % len as u64) as usize
    }
}

/// Lowercase hex digits (request ids, JSON's `\u00XX`).
pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";
/// Uppercase hex digits (the `\xHH` escapes of a log line, as nginx writes them).
pub(crate) const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// `v`'s 16 lowercase hex digits, a byte's two digits at a time.
pub(crate) fn hex16(v: u64) -> [u8; 16] {
    // Built at compile time: a request id costs 8 lookups and no allocation.
    const PAIRS: [[u8; 2]; 256] = {
        let mut t = [[0; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [HEX[i >> 4], HEX[i & 15]];
            i += 1;
        }
        t
    };
    let mut out = [0; 16];
    for (pair, byte) in out.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair.copy_from_slice(&PAIRS[usize::from(byte)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex16_is_the_lowercase_hex_of_the_number() {
        for v in [0, 1, 0xab, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(hex16(v), *format!("{v:016x}").as_bytes());
        }
    }

    #[test]
    fn xorshift_is_marsaglia_s_13_7_17() {
        let mut rng = Rng(1);
        assert_eq!(rng.next(), 1_082_269_761);
        assert_eq!(xorshift(0), 0);
        assert!((0..1000).all(|_| rng.index(3) < 3 && rng.below(7) < 7));
    }
}
