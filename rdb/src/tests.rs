use super::*;

/// A hand-built RDB: header, AUX, SELECTDB, RESIZEDB, a string with a TTL, an int-encoded key,
/// a hash as plain fields, EOF and the trailer.
fn sample(version: u16) -> Vec<u8> {
    let mut rdb = format!("REDIS{version:04}").into_bytes();
    rdb.extend_from_slice(&[OPCODE_AUX, 9]);
    rdb.extend_from_slice(b"redis-ver");
    rdb.extend_from_slice(&[6]);
    rdb.extend_from_slice(b"7.0.15");
    rdb.extend_from_slice(&[OPCODE_SELECTDB, 2, OPCODE_RESIZEDB, 2, 1]);
    rdb.push(OPCODE_EXPIRETIME_MS);
    rdb.extend_from_slice(&1_700_000_000_123i64.to_le_bytes());
    rdb.extend_from_slice(&[TYPE_STRING, 1, b'k', 3, b'v', b'a', b'l']);
    // Key "300" stored as INT16, value the INT8 7.
    rdb.extend_from_slice(&[TYPE_STRING, 0xC1, 0x2C, 0x01, 0xC0, 7]);
    rdb.extend_from_slice(&[TYPE_HASH, 1, b'h', 1, 1, b'f', 1, b'v']);
    rdb.push(OPCODE_EOF);
    let crc = crc64(0, &rdb);
    rdb.extend_from_slice(&crc.to_le_bytes());
    rdb
}

fn read_all(bytes: &[u8]) -> Result<(Vec<Item>, Option<Checksum>), RdbError> {
    let mut reader = RdbReader::new(bytes)?;
    let items = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
    Ok((items, reader.checksum()))
}

fn keys(items: &[Item]) -> Vec<&Key> {
    items.iter().filter_map(|i| if let Item::Key(k) = i { Some(k) } else { None }).collect()
}

#[test]
fn yields_keys_with_db_expiry_and_restorable_payloads() {
    let (items, checksum) = read_all(&sample(10)).unwrap();
    assert_eq!(checksum, Some(Checksum::Verified));
    assert_eq!(items[0], Item::Aux { name: b"redis-ver".to_vec(), value: b"7.0.15".to_vec() });
    let keys = keys(&items);
    assert_eq!(keys.len(), 3);
    assert_eq!((keys[0].db, &keys[0].key[..], keys[0].expire_at_ms), (2, &b"k"[..], Some(1_700_000_000_123)));
    assert_eq!(split_payload(&keys[0].payload), Some((TYPE_STRING, &[3, b'v', b'a', b'l'][..], 10)));
    assert_eq!((&keys[1].key[..], keys[1].expire_at_ms), (&b"300"[..], None));
    assert_eq!(split_payload(&keys[1].payload), Some((TYPE_STRING, &[0xC0, 7][..], 10)));
    assert_eq!(split_payload(&keys[2].payload), Some((TYPE_HASH, &[1, 1, b'f', 1, b'v'][..], 10)));
}

#[test]
fn every_truncation_is_refused_with_its_offset_and_never_panics() {
    let whole = sample(10);
    for len in 0..whole.len() {
        let err = read_all(&whole[..len]).expect_err("a truncated file must be refused");
        if len >= 9 {
            assert_eq!(err.offset, len as u64, "cut at {len}: {err}");
            assert!(matches!(err.reason, Reason::Truncated(_)), "cut at {len}: {err}");
        }
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let whole = sample(10);
    for at in 0..whole.len() {
        let mut bad = whole.clone();
        bad[at] ^= 0x01;
        assert!(read_all(&bad).is_err(), "a flip at {at} went unnoticed");
    }
}

#[test]
fn a_checksum_mismatch_names_both_values() {
    let mut bad = sample(10);
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    let err = read_all(&bad).unwrap_err();
    assert_eq!(err.offset, (n - 8) as u64);
    assert!(matches!(err.reason, Reason::Checksum { .. }));
}

#[test]
fn a_zero_trailer_means_no_checksum() {
    let mut rdb = sample(10);
    let n = rdb.len();
    rdb[n - 8..].fill(0);
    assert_eq!(read_all(&rdb).unwrap().1, Some(Checksum::Absent));
}

#[test]
fn bytes_after_the_trailer_are_refused() {
    let mut rdb = sample(10);
    rdb.push(0);
    assert_eq!(read_all(&rdb).unwrap_err().reason, Reason::TrailingData);
}

#[test]
fn newer_versions_and_valkey_are_refused_naming_the_version() {
    let err = read_all(&sample(11)).unwrap_err();
    assert_eq!((err.offset, err.reason.clone()), (5, Reason::TooNew(11)));
    assert!(err.to_string().contains("RDB version 11"), "{err}");
    assert!(err.to_string().contains("memlog import live"), "{err}");
    assert!(matches!(read_all(b"VALKEY080\xff").unwrap_err().reason, Reason::Valkey(_)));
    assert_eq!(read_all(b"HELLO0010").unwrap_err().reason, Reason::NotRdb);
    assert_eq!(read_all(b"REDIS00x0").unwrap_err().reason, Reason::NotRdb);
}

#[test]
fn module_values_are_refused_naming_the_module() {
    let mut rdb = b"REDIS0010".to_vec();
    // Module id of "ReJSON-RL" with encoding version 3, as a 64-bit length.
    let name = b"ReJSON-RL";
    const CHARSET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = 0u64;
    for c in name {
        id = (id << 6) | CHARSET.iter().position(|x| x == c).unwrap() as u64;
    }
    let id = (id << 10) | 3;
    rdb.extend_from_slice(&[TYPE_MODULE_2, 1, b'j', 0x81]);
    rdb.extend_from_slice(&id.to_be_bytes());
    assert_eq!(read_all(&rdb).unwrap_err().reason, Reason::ModuleValue("ReJSON-RL".into()));
}

#[test]
fn lzf_keys_are_decompressed() {
    let mut rdb = b"REDIS0010".to_vec();
    // Key "abcabcabc" as LZF (3 literal bytes, then a 6-byte back reference), value "x".
    rdb.extend_from_slice(&[TYPE_STRING, 0xC3, 6, 9, 2, b'a', b'b', b'c', 4 << 5, 2, 1, b'x', OPCODE_EOF]);
    rdb.extend_from_slice(&[0; 8]);
    let (items, _) = read_all(&rdb).unwrap();
    assert_eq!(keys(&items)[0].key, b"abcabcabc");
}

#[test]
fn split_payload_refuses_a_bad_crc() {
    let (items, _) = read_all(&sample(10)).unwrap();
    let mut payload = keys(&items)[0].payload.clone();
    *payload.last_mut().unwrap() ^= 1;
    assert_eq!(split_payload(&payload), None);
}
