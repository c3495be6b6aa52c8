//! Damaged state files: cut, bit-flipped, mangled at random, missing. Each
//! read must give the state exactly as committed, or a `Damaged` error;
//! never a state that silently lost or regained something.

use std::path::Path;

use super::journal::{self, Tail};
use super::store::{JOURNAL_FILE, LOCK_FILE, STATE_FILE};
use super::*;

/// A small deterministic generator (xorshift64*): the same cases every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn subnet() -> IpNetwork {
    "10.66.0.0/24".parse().unwrap()
}

fn endpoint(id: &str) -> Endpoint {
    Endpoint::for_tests(id, &format!("name-{id}"), 1, &[])
}

/// Attaches t0..t5 and attaches then detaches d0..d4 (the probe's history):
/// a journal of 16 records, no snapshot. Returns the state as committed.
fn probe_history(dir: &Path) -> State {
    let store = Store::open(dir).unwrap();
    let attach = |id: &str| {
        store
            .update(|s| -> Result<(), StoreError> {
                s.ipam.allocate(subnet(), id, None).unwrap();
                s.endpoints.insert(id.into(), endpoint(id).into());
                Ok(())
            })
            .unwrap()
    };
    for i in 0..5 {
        attach(&format!("d{i}"));
    }
    for i in 0..6 {
        attach(&format!("t{i}"));
    }
    for i in 0..5 {
        store
            .update(|s| -> Result<(), StoreError> {
                s.endpoints.remove(&format!("d{i}"));
                s.ipam.release_owner(&format!("d{i}"));
                Ok(())
            })
            .unwrap();
    }
    store.read().unwrap()
}

/// A copy of the state files in `from`, with the journal replaced by `journal`.
fn copy_with_journal(from: &Path, journal: &[u8]) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for name in [STATE_FILE, LOCK_FILE] {
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.path().join(name)).unwrap();
        }
    }
    std::fs::write(to.path().join(JOURNAL_FILE), journal).unwrap();
    to
}

/// Reads the state from `dir` afresh: the committed state, or a damage error.
fn read_is_exact_or_damaged(dir: &Path, committed: &State, case: &str) -> bool {
    match Store::open(dir).unwrap().read() {
        Ok(state) => {
            assert_eq!(
                &state, committed,
                "{case}: a state that was never committed"
            );
            true
        }
        Err(e) => {
            assert!(e.is_damage(), "{case}: {e}");
            assert!(e.to_string().contains("netd recover"), "{case}: {e}");
            false
        }
    }
}

/// The probe's case: the journal cut to half (or anywhere short of its end)
/// loses committed records, which used to pass as a torn last record.
#[test]
fn a_journal_cut_anywhere_is_damage_not_a_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let committed = probe_history(dir.path());
    let journal = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
    for cut in 0..journal.len() {
        let copy = copy_with_journal(dir.path(), &journal[..cut]);
        let exact = read_is_exact_or_damaged(copy.path(), &committed, &format!("cut at {cut}"));
        assert!(
            !exact,
            "the journal cut at byte {cut} of {} read as whole",
            journal.len()
        );
    }
    let whole = copy_with_journal(dir.path(), &journal);
    assert!(read_is_exact_or_damaged(whole.path(), &committed, "whole"));
    // A writer killed mid-append (the head not yet moved): cut silently.
    let record = &journal[journal.len() - 60..];
    let torn = copy_with_journal(dir.path(), &[journal.as_slice(), &record[..30]].concat());
    assert!(read_is_exact_or_damaged(
        torn.path(),
        &committed,
        "torn tail"
    ));
    let store = Store::open(torn.path()).unwrap();
    store
        .update(|s| -> Result<(), StoreError> {
            s.endpoints.insert("n".into(), endpoint("n").into());
            Ok(())
        })
        .unwrap();
    let mut after = committed.clone();
    after.endpoints.insert("n".into(), endpoint("n").into());
    after.settle();
    assert_eq!(Store::open(torn.path()).unwrap().read().unwrap(), after);
}

#[test]
fn every_flipped_bit_in_the_journal_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let committed = probe_history(dir.path());
    let journal = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
    let mut rng = Rng(0x5eed_0001);
    for at in 0..journal.len() {
        let mut bad = journal.clone();
        bad[at] ^= 1 << rng.below(8);
        let copy = copy_with_journal(dir.path(), &bad);
        let exact = read_is_exact_or_damaged(copy.path(), &committed, &format!("flip at {at}"));
        assert!(!exact, "a flipped bit at byte {at} went unseen");
    }
}

/// Random mangling, a fixed number of seeded cases: cuts, flips, inserted
/// and removed bytes, lines duplicated, dropped and swapped, garbage tails.
#[test]
fn mangled_journals_read_exactly_or_as_damage_never_as_something_else() {
    let dir = tempfile::tempdir().unwrap();
    let committed = probe_history(dir.path());
    let journal = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
    let lines: Vec<&[u8]> = journal.split_inclusive(|&b| b == b'\n').collect();
    let mut rng = Rng(0x5eed_0002);
    let (mut exact, mut damaged) = (0, 0);
    for case in 0..400 {
        let mut bad = journal.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(bad.len());
            match rng.below(7) {
                0 => bad.truncate(at),
                1 if !bad.is_empty() => {
                    let at = at.min(bad.len() - 1);
                    bad[at] ^= 1 << rng.below(8);
                }
                2 => bad.insert(at, rng.next() as u8),
                3 if !bad.is_empty() => {
                    bad.remove(at.min(bad.len() - 1));
                }
                4 => {
                    let i = rng.below(lines.len());
                    let mut v: Vec<&[u8]> = lines.clone();
                    match rng.below(3) {
                        0 => v.insert(i, lines[i]),
                        1 => {
                            v.remove(i);
                        }
                        _ => v.swap(i, rng.below(lines.len())),
                    }
                    bad = v.concat();
                }
                5 => bad.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                _ => bad.extend(std::iter::repeat_n(0u8, rng.below(64))),
            }
        }
        // The parser alone never panics, whatever it is given.
        let _ = journal::parse(&bad, None);
        let copy = copy_with_journal(dir.path(), &bad);
        if read_is_exact_or_damaged(copy.path(), &committed, &format!("case {case}")) {
            exact += 1;
        } else {
            damaged += 1;
        }
    }
    // Both outcomes happen (appended junk is a torn tail; most else is damage).
    assert!(exact > 0 && damaged > 0, "exact {exact}, damaged {damaged}");
}

#[test]
fn a_missing_or_damaged_snapshot_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Enough records to fold the journal into a snapshot, then a few more.
    for i in 0..450 {
        store
            .update(|s| -> Result<(), StoreError> {
                s.endpoints
                    .insert(format!("c{i}"), endpoint(&format!("c{i}")).into());
                Ok(())
            })
            .unwrap();
    }
    let committed = store.read().unwrap();
    let snapshot = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
    assert!(snapshot.starts_with(b"weft-state 2 "));
    let journal = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap_or_default();

    let missing = copy_with_journal(dir.path(), &journal);
    std::fs::remove_file(missing.path().join(STATE_FILE)).unwrap();
    let err = Store::open(missing.path()).unwrap().read().unwrap_err();
    assert!(err.is_damage(), "{err}");

    let mut rng = Rng(0x5eed_0003);
    for _ in 0..64 {
        let flipped = copy_with_journal(dir.path(), &journal);
        let mut bad = snapshot.clone();
        bad[rng.below(snapshot.len())] ^= 1 << rng.below(8);
        std::fs::write(flipped.path().join(STATE_FILE), &bad).unwrap();
        let exact = read_is_exact_or_damaged(flipped.path(), &committed, "snapshot flip");
        assert!(!exact, "a flipped bit in the snapshot went unseen");
    }
    let cut = copy_with_journal(dir.path(), &journal);
    std::fs::write(cut.path().join(STATE_FILE), &snapshot[..snapshot.len() / 2]).unwrap();
    let err = Store::open(cut.path()).unwrap().read().unwrap_err();
    assert!(err.to_string().contains("state.json is damaged"), "{err}");
}

/// Files format 1 wrote (bare JSON, no head) are read, and the next write
/// turns them into format 2.
#[test]
fn format_1_files_are_read_and_migrated_on_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = State::default();
    old.endpoints.insert("a".into(), endpoint("a").into());
    old.ipam.allocate(subnet(), "a", None).unwrap();
    std::fs::write(
        dir.path().join(STATE_FILE),
        serde_json::to_vec_pretty(&old).unwrap(),
    )
    .unwrap();
    let mut line = serde_json::to_vec(&journal::Change {
        endpoints: [("b".to_string(), Some(endpoint("b").into()))].into(),
        pools: Default::default(),
    })
    .unwrap();
    line.push(b'\n');
    std::fs::write(dir.path().join(JOURNAL_FILE), &line).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.read().unwrap().endpoints.len(), 2);
    store
        .update(|s| -> Result<(), StoreError> {
            s.endpoints.remove("a");
            Ok(())
        })
        .unwrap();
    let snapshot = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
    assert!(snapshot.starts_with(b"weft-state 2 0 "), "not migrated");
    let journal = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
    assert!(journal.starts_with("1 "), "{journal}");
    let state = Store::open(dir.path()).unwrap().read().unwrap();
    assert_eq!(state.endpoints.keys().collect::<Vec<_>>(), vec!["b"]);
    assert_eq!(state.ipam.held_by("a").len(), 1);
}

/// The corpus in netd/tests/corpus/journal: each file's name says how it
/// must read (`clean-`, `torn-`, `damaged-`).
#[test]
fn the_journal_corpus_reads_as_its_names_say() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/journal");
    let mut seen = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read(&path).unwrap();
        let outcome = match journal::parse(&text, None) {
            Tail::Clean(..) => "clean",
            Tail::Torn(..) => "torn",
            Tail::Damaged { .. } => "damaged",
        };
        assert!(name.starts_with(outcome), "{name} reads as {outcome}");
        seen += 1;
    }
    assert!(
        seen >= 5,
        "the corpus is missing: {seen} files in {}",
        corpus.display()
    );
}
