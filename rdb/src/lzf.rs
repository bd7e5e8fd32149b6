//! LZF decompression, for the strings an RDB stores compressed (`RDB_ENC_LZF`) that the reader
//! must read as text: keys and AUX fields. Values stay compressed inside DUMP payloads.
//! Format: src/lzf_d.c in Redis.

/// Decompresses `input` into exactly `expected_len` bytes, or says why it cannot.
pub fn decompress(input: &[u8], expected_len: usize) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(expected_len);
    let mut i = 0;
    while i < input.len() {
        let ctrl = input[i] as usize;
        i += 1;
        if ctrl < 32 {
            // A literal run of ctrl + 1 bytes.
            let run = ctrl + 1;
            let literal = input.get(i..i + run).ok_or("LZF literal runs past the input")?;
            if out.len() + run > expected_len {
                return Err("LZF output longer than announced");
            }
            out.extend_from_slice(literal);
            i += run;
        } else {
            // A back reference: length in the top 3 bits (7 = one more length byte follows).
            let mut len = ctrl >> 5;
            if len == 7 {
                len += *input.get(i).ok_or("LZF back reference cut short")? as usize;
                i += 1;
            }
            len += 2;
            let low = *input.get(i).ok_or("LZF back reference cut short")? as usize;
            i += 1;
            let distance = ((ctrl & 0x1f) << 8) + low + 1;
            if distance > out.len() {
                return Err("LZF back reference before the start of the output");
            }
            if out.len() + len > expected_len {
                return Err("LZF output longer than announced");
            }
            let start = out.len() - distance;
            // Byte by byte: a reference may overlap the bytes it produces.
            for k in 0..len {
                let b = out[start + k];
                out.push(b);
            }
        }
    }
    if out.len() != expected_len {
        return Err("LZF output shorter than announced");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decompress;

    #[test]
    fn literals_and_overlapping_back_references() {
        // "abc" as a literal, then a reference of length 6 at distance 3: "abcabcabc".
        let input = [2, b'a', b'b', b'c', (4 << 5), 2];
        assert_eq!(decompress(&input, 9).unwrap(), b"abcabcabc");
    }

    #[test]
    fn refuses_bad_input_without_panicking() {
        assert!(decompress(&[5, b'a'], 6).is_err());
        assert!(decompress(&[(1 << 5), 0], 3).is_err());
        assert!(decompress(&[0, b'a'], 2).is_err());
        assert!(decompress(&[1, b'a', b'b'], 1).is_err());
    }
}
