//! Reading payload fields without ever reading past the end.

use crate::WireError;

/// A bounds-checked cursor over a payload: every read names what it wanted,
/// and running short is a [`WireError::Malformed`], never a panic.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or_else(|| {
            WireError::Malformed(format!(
                "payload ends inside {what}: {n} bytes needed, {} left",
                self.buf.len()
            ))
        })?;
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WireError> {
        let bytes = self.bytes(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| WireError::Malformed(format!("{what}: bad length")))
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u32` byte count and that many bytes of UTF-8.
    pub(crate) fn text(&mut self, what: &str) -> Result<String, WireError> {
        let n = self.u32(what)?;
        let bytes = self.bytes(n as usize, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| WireError::Malformed(format!("{what}: {e}")))
    }

    /// Refuses `count` items of at least `min_bytes` each when fewer bytes
    /// are left, before anything is allocated for them.
    pub(crate) fn expect_at_least(
        &self,
        count: usize,
        min_bytes: usize,
        what: &str,
    ) -> Result<(), WireError> {
        if count.saturating_mul(min_bytes) > self.buf.len() {
            return Err(WireError::Malformed(format!(
                "{count} {what} cannot fit in the {} bytes left",
                self.buf.len()
            )));
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed(format!(
                "{} bytes left over after the payload",
                self.buf.len()
            )))
        }
    }
}
