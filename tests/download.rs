//! ensure_archive against a scripted HTTP server on 127.0.0.1.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::http::{listing, model_tgz, names, sha256_hex, Server, Step, Validators};
use flowers::backbone::download::{archive_file_name, ensure_archive, mirrored, Archive, Options};

const NAME: &str = "model_v1_frozen.tgz";

fn opts() -> Options {
    Options {
        timeout: Duration::from_secs(5),
        retries: 3,
        backoff: Duration::from_millis(10),
        show_progress: false,
        max_unpacked_bytes: 50 << 20,
        ..Options::default()
    }
}

/// The check of archives with no sha256: these tests all give one, so it never runs.
fn unused(_: &Path) -> anyhow::Result<()> {
    panic!("verify is for archives without a sha256")
}

fn archive<'a>(url: &'a str, sha: &'a str, size: Option<u64>) -> Archive<'a> {
    Archive {
        url,
        sha256: Some(sha),
        size,
    }
}

/// The archive and its members are in place, and nothing else is left behind.
fn assert_installed(model_dir: &Path, tgz: &[u8]) {
    assert_eq!(fs::read(model_dir.join(NAME)).unwrap(), tgz);
    assert!(model_dir.join("model_v1/graph.pb").is_file());
    assert_eq!(
        fs::read_to_string(model_dir.join("model_v1/labels.txt")).unwrap(),
        "0:background\n1:daisy\n"
    );
    let expected = [
        NAME.to_string(),
        format!(".{NAME}.extracted"),
        "model_v1".to_string(),
    ];
    assert_eq!(names(model_dir), expected.into_iter().collect());
}

fn assert_one_line(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    assert!(!text.contains('\n'), "not one line: {text}");
    text
}

#[test]
fn download_verifies_and_extracts() {
    let tgz = model_tgz("model_v1", 300_000);
    let server = Server::start(tgz.clone(), vec![], Step::Serve);
    let url = server.url(&format!("models/{NAME}"));
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("models");
    let sha = sha256_hex(&tgz);
    let o = Options {
        show_progress: true,
        ..opts()
    };

    let root = ensure_archive(
        &archive(&url, &sha, Some(tgz.len() as u64)),
        &model_dir,
        &o,
        &unused,
    )
    .unwrap();

    assert_eq!(root, model_dir);
    assert_installed(&model_dir, &tgz);
    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, format!("/models/{NAME}"));
    assert_eq!(seen[0].range, None);
}

#[test]
fn second_run_makes_no_request() {
    let tgz = model_tgz("model_v1", 50_000);
    let server = Server::start(tgz.clone(), vec![], Step::Serve);
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let sha = sha256_hex(&tgz);
    let a = archive(&url, &sha, None);

    ensure_archive(&a, tmp.path(), &opts(), &unused).unwrap();
    assert_eq!(server.requests().len(), 1);
    let before = listing(tmp.path());
    ensure_archive(&a, tmp.path(), &opts(), &unused).unwrap();
    assert_eq!(
        server.requests().len(),
        1,
        "second run must not touch the network"
    );
    assert_eq!(listing(tmp.path()), before);
}

#[test]
fn resume_after_cut_body() {
    let tgz = model_tgz("model_v1", 400_000);
    let server = Server::start(tgz.clone(), vec![Step::Cut(100_000)], Step::Serve);
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let sha = sha256_hex(&tgz);

    ensure_archive(
        &archive(&url, &sha, Some(tgz.len() as u64)),
        tmp.path(),
        &opts(),
        &unused,
    )
    .unwrap();

    let seen = server.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(seen[1].status, 206);
    assert_installed(tmp.path(), &tgz);
}

/// Installs `tgz` from a server answering as `step`, with `part` left in the model directory
/// by an earlier run as `<name>.part`, its record naming the same URL and the server's
/// ETag; returns the requests the server saw.
fn install_over_part(tgz: &[u8], part: &[u8], step: Step) -> Vec<common::http::Seen> {
    let server = Server::start(tgz.to_vec(), vec![], step);
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    write_part(tmp.path(), part, &url, &Validators::etag_of(tgz));

    ensure_archive(
        &archive(&url, &sha256_hex(tgz), None),
        tmp.path(),
        &opts(),
        &unused,
    )
    .unwrap();

    assert_installed(tmp.path(), tgz);
    server.requests()
}

/// `<name>.part` and its resume record, as a run cut off after `part` left them.
fn write_part(dir: &Path, part: &[u8], url: &str, validators: &Validators) {
    fs::write(dir.join(format!("{NAME}.part")), part).unwrap();
    let record = serde_json::json!({
        "url": url,
        "if_range": validators.etag,
        "etag": validators.etag,
    });
    fs::write(dir.join(format!("{NAME}.part.json")), record.to_string()).unwrap();
}

#[test]
fn resume_of_a_part_left_by_an_earlier_run() {
    let tgz = model_tgz("model_v1", 200_000);
    let seen = install_over_part(&tgz, &tgz[..12_345], Step::Serve);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].range.as_deref(), Some("bytes=12345-"));
    assert_eq!(seen[0].if_range, Validators::etag_of(&tgz).etag);
    assert_eq!(seen[0].status, 206);
}

#[test]
fn part_of_a_killed_run_is_resumed_by_the_next() {
    let tgz = model_tgz("model_v1", 300_000);
    let server = Server::start(tgz.clone(), vec![Step::Cut(70_000)], Step::Serve);
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let sha = sha256_hex(&tgz);
    let a = archive(&url, &sha, None);
    let once = Options {
        retries: 0,
        ..opts()
    };

    let err = ensure_archive(&a, tmp.path(), &once, &unused).unwrap_err();
    assert!(
        format!("{err:#}").contains("kept for the next run"),
        "{err:#}"
    );
    ensure_archive(&a, tmp.path(), &opts(), &unused).unwrap();

    assert_installed(tmp.path(), &tgz);
    let seen = server.requests();
    assert_eq!(seen[1].range.as_deref(), Some("bytes=70000-"), "{seen:?}");
    assert_eq!(seen[1].status, 206);
}

#[test]
fn server_ignoring_range_starts_over() {
    let tgz = model_tgz("model_v1", 100_000);
    let seen = install_over_part(&tgz, &[b'x'; 5000], Step::IgnoreRange);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].range.as_deref(), Some("bytes=5000-"));
    assert_eq!(seen[0].status, 200);
}

#[test]
fn complete_part_answered_416_is_kept() {
    let tgz = model_tgz("model_v1", 100_000);
    let seen = install_over_part(&tgz, &tgz, Step::Serve);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].status, 416);
}

#[test]
fn oversized_part_answered_416_starts_over() {
    let tgz = model_tgz("model_v1", 100_000);
    let seen = install_over_part(&tgz, &vec![0u8; tgz.len() + 10], Step::Serve);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].status, seen[1].status), (416, 200));
    assert_eq!(seen[1].range, None);
}

#[test]
fn server_errors_are_retried() {
    let tgz = model_tgz("model_v1", 10_000);
    let server = Server::start(
        tgz.clone(),
        vec![Step::Status(503), Step::Status(500)],
        Step::Serve,
    );
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();

    ensure_archive(
        &archive(&url, &sha256_hex(&tgz), None),
        tmp.path(),
        &opts(),
        &unused,
    )
    .unwrap();

    let statuses: Vec<u16> = server.requests().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [503, 500, 200]);
    assert_installed(tmp.path(), &tgz);
}

#[test]
fn checksum_mismatch_leaves_nothing() {
    let tgz = model_tgz("model_v1", 10_000);
    let server = Server::start(tgz.clone(), vec![], Step::Serve);
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let wrong = "ab".repeat(32);

    let err =
        ensure_archive(&archive(&url, &wrong, None), tmp.path(), &opts(), &unused).unwrap_err();

    let text = assert_one_line(&err);
    assert!(
        text.contains(&wrong) && text.contains(&sha256_hex(&tgz)),
        "{text}"
    );
    assert!(text.contains("expected"), "{text}");
    assert!(
        names(tmp.path()).is_empty(),
        "left: {:?}",
        names(tmp.path())
    );
}

#[test]
fn wrong_size_is_refused() {
    let tgz = model_tgz("model_v1", 10_000);
    let server = Server::start(tgz.clone(), vec![], Step::Serve);
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let sha = sha256_hex(&tgz);

    let err = ensure_archive(
        &archive(&url, &sha, Some(tgz.len() as u64 - 1)),
        tmp.path(),
        &opts(),
        &unused,
    )
    .unwrap_err();

    // Refused on the announced Content-Length, before a byte of the body was read.
    let text = assert_one_line(&err);
    assert!(
        text.contains(&format!(
            "announces {} bytes, expected {}",
            tgz.len(),
            tgz.len() - 1
        )),
        "{text}"
    );
    assert!(
        names(tmp.path()).is_empty(),
        "left: {:?}",
        names(tmp.path())
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn not_found_fails_at_once_in_one_line() {
    let server = Server::start(Vec::new(), vec![], Step::Status(404));
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();

    let err = ensure_archive(
        &archive(&url, &"00".repeat(32), None),
        tmp.path(),
        &opts(),
        &unused,
    )
    .unwrap_err();

    let text = assert_one_line(&err);
    assert!(
        text.starts_with(&format!("cannot download {url}: HTTP 404")),
        "{text}"
    );
    let place = tmp.path().join(NAME);
    assert!(
        text.contains(&format!("put it at {}", place.display())),
        "{text}"
    );
    assert!(text.contains("FLOWERS_MODEL_BASE_URL"), "{text}");
    assert_eq!(server.requests().len(), 1, "no retries on 404");
    assert!(names(tmp.path()).is_empty());
}

#[test]
fn refused_connection_fails_in_one_line() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/models/{NAME}");
    let tmp = tempfile::tempdir().unwrap();
    let o = Options {
        retries: 1,
        ..opts()
    };

    let err = ensure_archive(
        &archive(&url, &"00".repeat(32), None),
        tmp.path(),
        &o,
        &unused,
    )
    .unwrap_err();

    let text = assert_one_line(&err);
    assert!(
        text.starts_with(&format!("cannot download {url}: connection refused")),
        "{text}"
    );
    assert!(text.contains("download it by other means"), "{text}");
    assert!(names(tmp.path()).is_empty());
}

#[test]
fn stalled_server_times_out() {
    let server = Server::start(Vec::new(), vec![], Step::Stall(Duration::from_secs(3)));
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let o = Options {
        timeout: Duration::from_millis(300),
        retries: 0,
        ..opts()
    };

    let err = ensure_archive(
        &archive(&url, &"00".repeat(32), None),
        tmp.path(),
        &o,
        &unused,
    )
    .unwrap_err();

    let text = assert_one_line(&err);
    assert!(text.contains("timed out"), "{text}");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn archive_placed_by_hand_is_used_without_network() {
    let tgz = model_tgz("model_v1", 10_000);
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(NAME), &tgz).unwrap();
    // Nothing listens there: any request would fail.
    let url = format!("http://127.0.0.1:9/{NAME}");

    ensure_archive(
        &archive(&url, &sha256_hex(&tgz), None),
        tmp.path(),
        &opts(),
        &unused,
    )
    .unwrap();
    assert_installed(tmp.path(), &tgz);
}

/// A wrong file under the final name (by hand, or kept by an older flowers) is deleted
/// and downloaded again: a cache that repairs itself.
#[test]
fn wrong_archive_placed_by_hand_is_replaced() {
    let tgz = model_tgz("model_v1", 10_000);
    let server = Server::start(tgz.clone(), vec![], Step::Serve);
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(NAME), b"not it").unwrap();

    ensure_archive(
        &archive(&url, &sha256_hex(&tgz), None),
        tmp.path(),
        &opts(),
        &unused,
    )
    .unwrap();

    assert_installed(tmp.path(), &tgz);
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn wrong_archive_placed_by_hand_offline_is_deleted_and_the_error_names_the_url() {
    let tgz = model_tgz("model_v1", 10_000);
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(NAME), b"not it").unwrap();
    let url = format!("http://127.0.0.1:9/{NAME}");
    let o = Options {
        retries: 0,
        ..opts()
    };

    let err = ensure_archive(
        &archive(&url, &sha256_hex(&tgz), None),
        tmp.path(),
        &o,
        &unused,
    )
    .unwrap_err();
    let text = assert_one_line(&err);
    assert!(
        text.starts_with(&format!("cannot download {url}")),
        "{text}"
    );
    assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));
}

#[test]
fn interrupted_extraction_is_redone() {
    let tgz = model_tgz("model_v1", 20_000);
    let server = Server::start(tgz.clone(), vec![], Step::Serve);
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let sha = sha256_hex(&tgz);
    let a = archive(&url, &sha, None);
    ensure_archive(&a, tmp.path(), &opts(), &unused).unwrap();

    // Crash before the marker: half a tree and no marker.
    fs::remove_file(tmp.path().join(format!(".{NAME}.extracted"))).unwrap();
    fs::remove_file(tmp.path().join("model_v1/labels.txt")).unwrap();
    ensure_archive(&a, tmp.path(), &opts(), &unused).unwrap();
    assert_installed(tmp.path(), &tgz);

    // Extracted tree deleted by hand: the marker alone does not count.
    fs::remove_dir_all(tmp.path().join("model_v1")).unwrap();
    ensure_archive(&a, tmp.path(), &opts(), &unused).unwrap();
    assert_installed(tmp.path(), &tgz);
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn hostile_archive_from_server_is_refused() {
    let evil = common::http::tgz_of(vec![(
        common::http::raw_header("../evil", tar::EntryType::Regular, 5),
        b"evil\n".to_vec(),
    )]);
    let server = Server::start(evil.clone(), vec![], Step::Serve);
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("models");
    fs::create_dir(&model_dir).unwrap();
    fs::write(tmp.path().join("bystander"), b"x").unwrap();
    let before = names(tmp.path());

    let err = ensure_archive(
        &archive(&url, &sha256_hex(&evil), None),
        &model_dir,
        &opts(),
        &unused,
    )
    .unwrap_err();

    let text = assert_one_line(&err);
    assert!(text.contains("leaves the target directory"), "{text}");
    assert_eq!(names(tmp.path()), before);
    // Not even the archive stays (though its sha256 matched): a later run downloads it
    // again rather than trusting a file it could not use.
    assert!(names(&model_dir).is_empty(), "{:?}", names(&model_dir));
}

/// The real archive retrain.py downloads for `mobilenet_0.25_224`, served locally.
#[test]
fn genuine_mobilenet_archive() {
    const SHA: &str = "1cddeede49eb35af36061aaa66bf643b81f7ea89abc85f6ffef8f0bf00891756";
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tf/mobilenet_v1_0.25_224_frozen.tgz");
    let tgz = fs::read(path).unwrap();
    let server = Server::start(tgz.clone(), vec![Step::Cut(1_000_000)], Step::Serve);
    let base = server.url("mirror/");
    let url = mirrored(
        "https://storage.googleapis.com/download.tensorflow.org/models/mobilenet_v1_0.25_224_frozen.tgz",
        Some(&base),
    );
    let tmp = tempfile::tempdir().unwrap();
    let a = Archive {
        url: &url,
        sha256: Some(SHA),
        size: Some(2_621_521),
    };

    let root = ensure_archive(&a, tmp.path(), &opts(), &unused).unwrap();

    let graph = root.join("mobilenet_v1_0.25_224/frozen_graph.pb");
    assert_eq!(fs::metadata(&graph).unwrap().len(), 1_998_252);
    assert_eq!(
        sha256_hex(&fs::read(&graph).unwrap()),
        "bf56de7d43277493cbf251dc97e5ce3332725f2d134cf62418d666278f9b5ff7"
    );
    assert!(root.join("mobilenet_v1_0.25_224/labels.txt").is_file());
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/mirror/mobilenet_v1_0.25_224_frozen.tgz");
    assert_eq!(seen[1].range.as_deref(), Some("bytes=1000000-"));
}

#[test]
fn mirrored_and_file_names() {
    let url = "https://storage.googleapis.com/download.tensorflow.org/models/m_frozen.tgz";
    assert_eq!(mirrored(url, None), url);
    assert_eq!(mirrored(url, Some("")), url);
    assert_eq!(
        mirrored(url, Some("http://127.0.0.1:8000/x/")),
        "http://127.0.0.1:8000/x/m_frozen.tgz"
    );
    assert_eq!(
        mirrored(url, Some("http://127.0.0.1:8000/x")),
        "http://127.0.0.1:8000/x/m_frozen.tgz"
    );
    assert_eq!(
        mirrored("http://h/a/m.tgz?token=1", Some("http://m/")),
        "http://m/m.tgz"
    );
    assert_eq!(archive_file_name(url).unwrap(), "m_frozen.tgz");
    assert_eq!(
        archive_file_name("http://h/a/m.tgz?x=/y#z").unwrap(),
        "m.tgz"
    );
    assert!(archive_file_name("http://h/a/").is_err());
    assert!(archive_file_name("http://h/a/..").is_err());
}

#[test]
fn bad_sha_argument_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let a = archive("http://127.0.0.1:9/m.tgz", "xyz", None);
    assert!(ensure_archive(&a, tmp.path(), &opts(), &unused).is_err());
}
