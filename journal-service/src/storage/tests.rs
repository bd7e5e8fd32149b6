//! Storage engine tests on temp dirs: durability across reopen, torn tails, corruption,
//! fencing, truncation, group commit and injected fsync failures.

use std::fs::OpenOptions;
use std::io::Write;

use bytes::Bytes;

use super::*;

const S: &str = "shard-0";

fn entry(epoch: u64, lsn: u64) -> Entry {
    Entry { epoch, lsn, timestamp_ms: 1_000 + lsn, commit_lsn: lsn.saturating_sub(1), payload: payload(lsn) }
}

fn payload(lsn: u64) -> Bytes {
    Bytes::from(format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n{}\r\n", lsn.to_string().len(), lsn).repeat(3))
}

fn small_segments() -> StorageOptions {
    StorageOptions { segment_bytes: 1024, ..StorageOptions::default() }
}

fn open(dir: &Path) -> Storage {
    Storage::open(dir, small_segments()).unwrap()
}

/// Appends `from..=to` at `epoch`, queued in groups of 4 (a segment rolls between group commits).
async fn append_range(storage: &Storage, epoch: u64, from: u64, to: u64) {
    let lsns: Vec<u64> = (from..=to).collect();
    for group in lsns.chunks(4) {
        let pending: Vec<_> = group.iter().map(|&lsn| storage.append(S, entry(epoch, lsn))).collect();
        for (lsn, p) in group.iter().zip(pending) {
            p.await.unwrap_or_else(|e| panic!("append {lsn}: {e}"));
        }
    }
}

fn assert_holds(storage: &Storage, epoch: u64, from: u64, to: u64) {
    let got = storage.read(S, from, to, usize::MAX).unwrap();
    let want: Vec<Entry> = (from..=to).map(|lsn| entry(epoch, lsn)).collect();
    assert_eq!(got, want);
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir.join("streams").join(S))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn appends_read_back_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    append_range(&storage, 1, 1, 100).await;
    assert_holds(&storage, 1, 1, 100);
    assert!(segment_files(dir.path()).len() > 3, "small segments roll");
    let tail = storage.status().streams[S].clone();
    assert_eq!(tail, StreamTail { fenced_epoch: 1, first_lsn: 1, last_lsn: 100, last_epoch: 1, commit_lsn: 99 });
    drop(storage);

    let storage = open(dir.path());
    assert_holds(&storage, 1, 1, 100);
    assert_eq!(storage.status().streams[S], tail);
    append_range(&storage, 1, 101, 110).await;
    assert_holds(&storage, 1, 95, 110);
}

#[tokio::test]
async fn reads_respect_ranges_and_byte_limits() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    append_range(&storage, 1, 1, 40).await;
    let one = payload(10).len();
    let got = storage.read(S, 10, 40, one * 3).unwrap();
    assert_eq!(got.iter().map(|e| e.lsn).collect::<Vec<_>>(), vec![10, 11, 12]);
    assert_eq!(storage.read(S, 10, 40, 1).unwrap().len(), 1, "at least one entry");
    assert_eq!(storage.read(S, 38, 1000, usize::MAX).unwrap().len(), 3);
    assert!(storage.read(S, 41, 50, usize::MAX).unwrap().is_empty());
    assert!(storage.read("no-such-stream", 1, 5, usize::MAX).unwrap().is_empty());
    assert!(matches!(storage.read("../x", 1, 5, 10), Err(NodeError::Protocol(_))));
}

#[tokio::test]
async fn appends_are_checked_for_order() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let err = storage.append(S, entry(1, 2)).await.unwrap_err();
    assert_eq!(err, NodeError::OutOfOrder { stream: S.into(), expected_lsn: 1 });
    append_range(&storage, 1, 1, 3).await;
    let err = storage.append(S, entry(1, 3)).await.unwrap_err();
    assert_eq!(err, NodeError::OutOfOrder { stream: S.into(), expected_lsn: 4 });
}

#[tokio::test]
async fn a_torn_tail_is_cut_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    append_range(&storage, 1, 1, 10).await;
    drop(storage);
    let last = segment_files(dir.path()).pop().unwrap();
    // The records, without the zeros prepared after them (which the torn record follows here).
    let clean_len = {
        let data = fs::read(&last).unwrap();
        (data.len() - data.iter().rev().take_while(|&&b| b == 0).count()) as u64
    };
    let mut torn = Vec::new();
    crate::record::encode(&entry(1, 11), &mut torn);
    torn.truncate(torn.len() / 2);
    OpenOptions::new().append(true).open(&last).unwrap().write_all(&torn).unwrap();

    let storage = open(dir.path());
    assert_eq!(fs::metadata(&last).unwrap().len(), clean_len, "the partial record is cut");
    assert_holds(&storage, 1, 1, 10);
    append_range(&storage, 1, 11, 12).await;
    assert_holds(&storage, 1, 1, 12);
}

#[tokio::test]
async fn a_zero_filled_tail_is_space_for_appends() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    append_range(&storage, 1, 1, 3).await;
    drop(storage);
    let last = segment_files(dir.path()).pop().unwrap();
    OpenOptions::new().append(true).open(&last).unwrap().write_all(&[0u8; 300]).unwrap();
    let storage = open(dir.path());
    assert_holds(&storage, 1, 1, 3);
    append_range(&storage, 1, 4, 20).await;
    drop(storage);
    let storage = open(dir.path());
    assert_holds(&storage, 1, 1, 20);
}

#[tokio::test]
async fn appends_go_into_space_prepared_ahead_and_segments_end_at_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let storage =
        Storage::open(dir.path(), StorageOptions { segment_bytes: 8192, ..StorageOptions::default() }).unwrap();
    append_range(&storage, 1, 1, 4).await;
    let first = segment_files(dir.path()).pop().unwrap();
    // The writer prepares the rest of the segment after acknowledging the batch; wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while fs::metadata(&first).unwrap().len() < 8192 {
        assert!(std::time::Instant::now() < deadline, "no space prepared ahead");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    append_range(&storage, 1, 5, 200).await;
    assert!(segment_files(dir.path()).len() > 2, "segments roll");
    drop(storage);
    let files = segment_files(dir.path());
    for full in &files[..files.len() - 1] {
        let data = fs::read(full).unwrap();
        assert_ne!(data.last(), Some(&0), "{}: a rolled segment ends at its last record", full.display());
    }
    let storage = open(dir.path());
    assert_holds(&storage, 1, 1, 200);
}

#[tokio::test]
async fn corruption_in_the_middle_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageOptions::default()).unwrap();
    append_range(&storage, 1, 1, 10).await;
    let record_len = crate::record::encoded_len(&entry(1, 1)) as u64;
    drop(storage);
    let file = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&file).unwrap();
    // Flip a payload byte of the 5th record (all records of lsn 1..=9 have the same size).
    let fifth = 4 * record_len;
    bytes[(fifth + 45) as usize] ^= 0x40;
    fs::write(&file, &bytes).unwrap();

    let err = Storage::open(dir.path(), StorageOptions::default()).err().expect("must refuse to open");
    match &err {
        OpenError::Corrupt { path, offset, .. } => {
            assert_eq!(path, &file);
            assert_eq!(*offset, fifth);
        }
        other => panic!("unexpected {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&file.display().to_string()) && message.contains(&fifth.to_string()), "{message}");
    assert_eq!(fs::read(&file).unwrap(), bytes, "nothing is cut");
}

#[tokio::test]
async fn corruption_in_an_older_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    append_range(&storage, 1, 1, 60).await;
    drop(storage);
    let first = segment_files(dir.path()).remove(0);
    let len = fs::metadata(&first).unwrap().len();
    OpenOptions::new().write(true).open(&first).unwrap().set_len(len - 3).unwrap();
    let err = Storage::open(dir.path(), small_segments()).err().expect("must refuse to open");
    assert!(matches!(&err, OpenError::Corrupt { path, .. } if path == &first), "{err}");
}

#[tokio::test]
async fn fencing_is_durable_and_refuses_older_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    append_range(&storage, 1, 1, 5).await;
    let tail = storage.fence(S, 3).await.unwrap();
    assert_eq!(tail, StreamTail { fenced_epoch: 3, first_lsn: 1, last_lsn: 5, last_epoch: 1, commit_lsn: 4 });
    drop(storage);

    let storage = open(dir.path());
    assert_eq!(storage.status().streams[S].fenced_epoch, 3);
    let fenced = NodeError::Fenced { stream: S.into(), fenced_epoch: 3 };
    assert_eq!(storage.append(S, entry(2, 6)).await.unwrap_err(), fenced);
    assert_eq!(storage.fence(S, 2).await.unwrap_err(), fenced);
    assert_eq!(storage.truncate_after(S, 2, 1).await.unwrap_err(), fenced);
    assert_eq!(storage.fence(S, 3).await.unwrap().fenced_epoch, 3, "fencing again at the same epoch is fine");
    storage.append(S, entry(3, 6)).await.unwrap();
    // An append from a newer writer raises the fence too, durably.
    storage.append(S, entry(4, 7)).await.unwrap();
    assert_eq!(storage.append(S, entry(3, 8)).await.unwrap_err().to_string(), "stream shard-0: fenced at epoch 4");
    drop(storage);
    let storage = open(dir.path());
    assert_eq!(storage.status().streams[S].fenced_epoch, 4);
    assert_eq!(storage.status().streams[S].last_epoch, 4);
}

#[tokio::test]
async fn truncate_after_drops_the_tail_durably() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    append_range(&storage, 1, 1, 60).await;
    storage.truncate_after(S, 2, 7).await.unwrap();
    let tail = storage.status().streams[S].clone();
    assert_eq!((tail.last_lsn, tail.last_epoch, tail.commit_lsn, tail.fenced_epoch), (7, 1, 6, 2));
    assert_holds(&storage, 1, 1, 7);
    assert!(storage.read(S, 8, 60, usize::MAX).unwrap().is_empty());
    drop(storage);

    let storage = open(dir.path());
    assert_eq!(storage.status().streams[S].last_lsn, 7);
    assert_eq!(storage.status().streams[S].fenced_epoch, 2);
    append_range(&storage, 2, 8, 30).await;
    assert_holds(&storage, 2, 8, 30);
    storage.truncate_after(S, 2, 30).await.unwrap();
    assert_eq!(storage.status().streams[S].last_lsn, 30, "truncating at the tail is a no-op");
    storage.truncate_after(S, 2, 0).await.unwrap();
    assert_eq!(storage.status().streams[S].last_lsn, 0);
    drop(storage);
    let storage = open(dir.path());
    assert_eq!(storage.status().streams[S].last_lsn, 0);
    append_range(&storage, 2, 1, 2).await;
}

#[tokio::test]
async fn truncate_below_drops_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    append_range(&storage, 1, 1, 60).await;
    let before = segment_files(dir.path()).len();
    storage.truncate_below(S, 1, 30).await.unwrap();
    let first = storage.status().streams[S].first_lsn;
    assert!(first > 1 && first <= 30, "first_lsn {first}");
    assert!(segment_files(dir.path()).len() < before);
    assert_holds(&storage, 1, 30, 60);
    assert!(matches!(storage.read(S, 1, 60, usize::MAX), Err(NodeError::Protocol(_))));
    drop(storage);

    let storage = open(dir.path());
    assert_eq!(storage.status().streams[S].first_lsn, first);
    assert_holds(&storage, 1, first, 60);
    // Everything below 100: the stream restarts empty at 100.
    storage.truncate_below(S, 1, 100).await.unwrap();
    let tail = storage.status().streams[S].clone();
    assert_eq!((tail.first_lsn, tail.last_lsn), (100, 99));
    assert!(matches!(storage.append(S, entry(1, 61)).await, Err(NodeError::OutOfOrder { expected_lsn: 100, .. })));
    append_range(&storage, 1, 100, 101).await;
    assert!(matches!(storage.truncate_below(S, 1, u64::MAX).await, Err(NodeError::Protocol(_))));
    drop(storage);
    let storage = open(dir.path());
    assert_holds(&storage, 1, 100, 101);
    assert_eq!(storage.status().streams[S].first_lsn, 100);
}

#[tokio::test]
async fn a_stale_epoch_cannot_truncate_below_and_does_not_raise_the_fence() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    append_range(&storage, 1, 1, 60).await;
    storage.fence(S, 3).await.unwrap();
    let before = storage.status().streams[S].clone();
    assert!(matches!(storage.truncate_below(S, 2, 30).await, Err(NodeError::Fenced { fenced_epoch: 3, .. })));
    assert_eq!(storage.status().streams[S], before, "a refused truncation changes nothing");
    storage.truncate_below(S, 3, 30).await.unwrap();
    let after = storage.status().streams[S].clone();
    assert!(after.first_lsn > before.first_lsn);
    // A truncation at a higher epoch than the fence is allowed but claims nothing.
    storage.truncate_below(S, 9, 40).await.unwrap();
    assert_eq!(storage.status().streams[S].fenced_epoch, 3);
}

#[tokio::test]
async fn no_stream_is_created_past_max_streams() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageOptions { max_streams: 2, ..small_segments() }).unwrap();
    storage.fence("a", 1).await.unwrap();
    storage.fence("b", 1).await.unwrap();
    let refused = storage.fence("c", 1).await.unwrap_err();
    assert!(refused.to_string().contains("maximum of 2 streams"), "{refused}");
    assert!(matches!(storage.watch("c"), Err(NodeError::Protocol(_))));
    assert_eq!(storage.status().streams.len(), 2);
    assert!(!dir.path().join("streams/c").exists());
    // Existing streams still work.
    storage.append("a", Entry { epoch: 1, ..entry(1, 1) }).await.unwrap();
}

#[tokio::test]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(Storage::open(dir.path(), StorageOptions::default()).unwrap());
    storage.append(S, entry(1, 1)).await.unwrap();
    let syncs_before = storage.data_syncs();
    let pending: Vec<_> = (2..=501).map(|lsn| storage.append(S, entry(1, lsn))).collect();
    for p in pending {
        p.await.unwrap();
    }
    let syncs = storage.data_syncs() - syncs_before;
    assert!(syncs < 100, "500 queued appends took {syncs} fsyncs");
    assert_holds(&storage, 1, 1, 501);
}

#[tokio::test]
async fn a_failed_fsync_is_never_acknowledged_and_poisons_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions { fail_fsync_after: Some(3), ..StorageOptions::default() };
    let storage = Storage::open(dir.path(), options).unwrap();
    for lsn in 1..=3 {
        storage.append(S, entry(1, lsn)).await.unwrap();
    }
    let err = storage.append(S, entry(1, 4)).await.unwrap_err();
    assert!(matches!(&err, NodeError::Storage(m) if m.contains("injected fsync failure")), "{err}");
    // Not retried and acknowledged later: the stream refuses changes but keeps serving reads.
    assert!(
        matches!(storage.append(S, entry(1, 4)).await, Err(NodeError::Storage(m)) if m.contains("until the node restarts"))
    );
    assert!(matches!(storage.truncate_after(S, 1, 2).await, Err(NodeError::Storage(_))));
    assert_holds(&storage, 1, 1, 3);
    assert!(storage.read(S, 4, 4, usize::MAX).unwrap().is_empty(), "the unsynced entry is not served");
    assert_eq!(storage.status().streams[S].last_lsn, 3);
    assert_eq!(storage.fence(S, 2).await.unwrap().last_lsn, 3, "fencing still works and reports the durable tail");
    drop(storage);

    // A restart rescans: the acknowledged entries are there; lsn 4 (written, never acknowledged) may be too.
    let storage = open(dir.path());
    let tail = storage.status().streams[S].clone();
    assert!(tail.last_lsn == 3 || tail.last_lsn == 4, "{tail:?}");
    assert_holds(&storage, 1, 1, 3);
    storage.append(S, entry(2, tail.last_lsn + 1)).await.unwrap();
}

#[tokio::test]
async fn a_directory_serves_one_node_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let _storage = open(dir.path());
    assert!(matches!(Storage::open(dir.path(), small_segments()), Err(OpenError::Locked(_))));
}

#[cfg(feature = "failpoints")]
#[test]
fn failpoint_env_values_parse() {
    let parse = |v: &str| {
        std::env::set_var(FAILPOINT_ENV, v);
        let r = StorageOptions::default().with_failpoint_from_env().map(|o| o.fail_fsync_after);
        std::env::remove_var(FAILPOINT_ENV);
        r
    };
    assert_eq!(parse("fsync"), Ok(Some(0)));
    assert_eq!(parse("fsync-after=7"), Ok(Some(7)));
    assert!(parse("nonsense").is_err());
}
