//! Downloads from misbehaving servers (issue 22, items 2 and 3), against the real HTTP
//! server of tests/common/http.rs: a captive portal's page, garbage, a hostile archive, a
//! wrong archive, an endless or slow body, and resumes that could splice two files. Each
//! case: the error (or success), nothing left under the final name (nor anything else in
//! the model folder), and a following run against a good server works.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use common::hostile::{assert_refused, run_bounded, snapshot};
use common::http::{
    model_tgz, names, noise, raw_header, sha256_hex, tgz_of, Server, Step, Validators,
};
use flate2::write::GzEncoder;
use flate2::Compression;
use flowers::backbone::download::{ensure_archive, Archive, Options};

const NAME: &str = "model_v1_frozen.tgz";
const MIB: u64 = 1 << 20;

/// Small bounds, so that every case ends in a few seconds.
fn opts() -> Options {
    Options {
        timeout: Duration::from_secs(3),
        retries: 1,
        backoff: Duration::from_millis(10),
        show_progress: false,
        max_unpacked_bytes: 50 * MIB,
        max_download_bytes: MIB,
        min_rate: 1024,
        rate_window: Duration::from_millis(500),
        deadline: Duration::from_secs(20),
    }
}

/// As retrain.py's MobileNets: no sha256, no size.
fn unhashed(url: &str) -> Archive<'_> {
    Archive {
        url,
        sha256: None,
        size: None,
    }
}

/// What backbone/mod.rs checks first: the member the architecture needs is there.
fn has_graph(root: &Path) -> anyhow::Result<()> {
    if !root.join("model_v1/graph.pb").is_file() {
        bail!("it has no model_v1/graph.pb");
    }
    Ok(())
}

fn good_tgz() -> Vec<u8> {
    model_tgz("model_v1", 200_000)
}

fn one_line(result: anyhow::Result<PathBuf>) -> String {
    let text = format!("{:#}", result.unwrap_err());
    assert!(!text.contains('\n'), "not one line: {text}");
    text
}

/// Nothing at all in the model folder: no archive, no `.part` or record, no marker, no
/// extracted entry, no temporary directory.
fn assert_nothing_kept(model_dir: &Path) {
    assert!(names(model_dir).is_empty(), "left: {:?}", names(model_dir));
}

/// A good server next: the archive is downloaded, verified and installed.
fn assert_a_good_run_works(model_dir: &Path) {
    let tgz = good_tgz();
    let server = Server::start(tgz.clone(), vec![], Step::Serve);
    let url = server.url(NAME);
    ensure_archive(&unhashed(&url), model_dir, &opts(), &has_graph).unwrap();
    assert_eq!(fs::read(model_dir.join(NAME)).unwrap(), tgz);
    let expected = [NAME.into(), format!(".{NAME}.extracted"), "model_v1".into()];
    assert_eq!(names(model_dir), expected.into_iter().collect());
}

/// Runs one download from a server answering `step`, expects it to fail with `why` and
/// to leave nothing, then proves a good run works; returns the error and the requests.
fn refused(step: Step, why: &str) -> (String, Vec<common::http::Seen>) {
    let server = Server::start(good_tgz(), vec![], step);
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("models");
    let bystander = tmp.path().join("bystander");
    fs::write(&bystander, b"x").unwrap();
    let outside = snapshot(tmp.path());

    let text = one_line(ensure_archive(
        &unhashed(&url),
        &model_dir,
        &opts(),
        &has_graph,
    ));

    assert!(text.contains(why), "expected {why:?} in {text}");
    assert!(text.contains(&url), "{text}");
    assert_nothing_kept(&model_dir);
    let mut now = snapshot(tmp.path());
    now.remove(&model_dir);
    assert_eq!(now, outside, "something outside the model folder changed");
    let seen = server.requests();
    drop(server);
    assert_a_good_run_works(&model_dir);
    (text, seen)
}

#[test]
fn captive_portal_page_with_200_is_refused_before_its_body() {
    let (text, seen) = refused(Step::Html, "sent a web page (text/html");
    assert!(text.contains("nothing was kept"), "{text}");
    assert_eq!(seen.len(), 1, "no retry of a page: {seen:?}");
}

#[test]
fn page_sent_as_octet_stream_is_not_kept() {
    let page = b"<html><body>Please log in.</body></html>".to_vec();
    refused(Step::Other(page), "cannot read");
}

#[test]
fn garbage_with_200_is_not_kept() {
    let (text, _) = refused(Step::Other(noise(5000, 1)), "is not a usable archive");
    assert!(text.contains("it was deleted"), "{text}");
}

#[test]
fn hostile_archive_is_not_kept() {
    let evil = tgz_of(vec![(
        raw_header("../evil", tar::EntryType::Regular, 5),
        b"evil\n".to_vec(),
    )]);
    refused(Step::Other(evil), "leaves the target directory");
}

#[test]
fn archive_without_the_member_is_not_kept() {
    // A well-formed archive of something else: only the caller's check can tell.
    refused(
        Step::Other(model_tgz("other_v1", 1000)),
        "it has no model_v1/graph.pb",
    );
}

#[test]
fn endless_chunked_body_is_cut_off_at_the_limit() {
    let start = Instant::now();
    let (_, seen) = refused(Step::Endless, "more than the limit of 1048576 bytes");
    assert_eq!(seen.len(), 1, "no retry past the limit: {seen:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn huge_content_length_is_refused_before_the_body() {
    let start = Instant::now();
    let (_, seen) = refused(
        Step::Overlong(1_000_000_000_000),
        "announces 1000000000000 bytes, over the limit of 1048576 bytes",
    );
    assert_eq!(seen.len(), 1);
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// The slow drip: a huge Content-Length, then one byte every 2 s.
#[test]
fn slow_drip_with_a_huge_length_fails_at_once() {
    let start = Instant::now();
    let drip = Step::Drip {
        declared: Some(1_000_000_000_000),
        every: Duration::from_secs(2),
    };
    refused(drip, "announces 1000000000000 bytes");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn slow_drip_fails_on_the_minimum_rate() {
    let start = Instant::now();
    let drip = Step::Drip {
        declared: None,
        every: Duration::from_millis(50),
    };
    let (text, seen) = refused(drip, "too slow");
    assert!(text.contains("under the minimum of 1024 bytes/s"), "{text}");
    assert_eq!(seen.len(), 2, "one retry: {seen:?}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn the_overall_deadline_ends_a_download_fast_enough_for_the_rate() {
    let server = Server::start(
        good_tgz(),
        vec![],
        Step::Drip {
            declared: None,
            every: Duration::from_millis(1),
        },
    );
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let o = Options {
        min_rate: 10,
        retries: 5,
        deadline: Duration::from_millis(1500),
        ..opts()
    };
    let start = Instant::now();

    let text = one_line(ensure_archive(&unhashed(&url), tmp.path(), &o, &has_graph));

    assert!(text.contains("overall limit"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    assert_nothing_kept(tmp.path());
}

#[test]
fn length_other_than_the_known_size_is_refused_before_the_body() {
    let tgz = good_tgz();
    let server = Server::start(tgz.clone(), vec![], Step::Overlong(tgz.len() as u64 + 1));
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let sha = sha256_hex(&tgz);
    let a = Archive {
        url: &url,
        sha256: Some(&sha),
        size: Some(tgz.len() as u64),
    };

    let text = one_line(ensure_archive(&a, tmp.path(), &opts(), &has_graph));

    let announced = format!("announces {} bytes, expected {}", tgz.len() + 1, tgz.len());
    assert!(text.contains(&announced), "{text}");
    assert_eq!(server.requests().len(), 1);
    assert_nothing_kept(tmp.path());
}

/// A first run cut after `cut` bytes of `first` (no retry): the `.part` and its record
/// stay for a resume. Returns the model folder and the URL it came from.
fn cut_run(server: &Server) -> (tempfile::TempDir, String) {
    let url = server.url(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let once = Options {
        retries: 0,
        ..opts()
    };
    let text = one_line(ensure_archive(
        &unhashed(&url),
        tmp.path(),
        &once,
        &has_graph,
    ));
    assert!(text.contains("kept for the next run"), "{text}");
    let part = [format!("{NAME}.part"), format!("{NAME}.part.json")];
    assert_eq!(names(tmp.path()), part.into_iter().collect());
    (tmp, url)
}

/// Another archive, different from the first byte of its graph on.
fn other_tgz() -> Vec<u8> {
    model_tgz("model_v1", 250_000)
}

#[test]
fn part_from_another_server_is_not_resumed() {
    let first = Server::start(good_tgz(), vec![Step::Cut(100_000)], Step::Serve);
    let (tmp, _) = cut_run(&first);
    let second = Server::start(other_tgz(), vec![], Step::Serve);

    ensure_archive(
        &unhashed(&second.url(NAME)),
        tmp.path(),
        &opts(),
        &has_graph,
    )
    .unwrap();

    let seen = second.requests();
    assert_eq!(
        (seen[0].range.as_deref(), seen[0].status),
        (None, 200),
        "{seen:?}"
    );
    assert_eq!(fs::read(tmp.path().join(NAME)).unwrap(), other_tgz());
}

#[test]
fn same_url_serving_another_file_answers_the_resume_in_full() {
    let first = Server::start(good_tgz(), vec![Step::Cut(100_000)], Step::Serve);
    let port = first.port();
    let (tmp, url) = cut_run(&first);
    drop(first);
    let changed = Validators::etag_of(&other_tgz());
    let second = Server::start_on(port, other_tgz(), vec![], Step::Serve, changed);

    ensure_archive(&unhashed(&url), tmp.path(), &opts(), &has_graph).unwrap();

    let seen = second.requests();
    assert_eq!(seen[0].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(seen[0].if_range, Validators::etag_of(&good_tgz()).etag);
    assert_eq!(
        seen[0].status, 200,
        "If-Range did not match: the whole file"
    );
    assert_eq!(fs::read(tmp.path().join(NAME)).unwrap(), other_tgz());
}

#[test]
fn server_ignoring_if_range_is_caught_by_its_etag() {
    let first = Server::start(good_tgz(), vec![Step::Cut(100_000)], Step::Serve);
    let port = first.port();
    let (tmp, url) = cut_run(&first);
    drop(first);
    let changed = Validators::etag_of(&other_tgz());
    let second = Server::start_on(
        port,
        other_tgz(),
        vec![Step::IgnoreIfRange],
        Step::Serve,
        changed,
    );

    ensure_archive(&unhashed(&url), tmp.path(), &opts(), &has_graph).unwrap();

    let seen = second.requests();
    let statuses: Vec<(Option<&str>, u16)> = seen
        .iter()
        .map(|s| (s.range.as_deref(), s.status))
        .collect();
    assert_eq!(statuses, [(Some("bytes=100000-"), 206), (None, 200)]);
    assert_eq!(fs::read(tmp.path().join(NAME)).unwrap(), other_tgz());
}

#[test]
fn same_file_is_resumed_with_its_etag() {
    let first = Server::start(good_tgz(), vec![Step::Cut(100_000)], Step::Serve);
    let (tmp, url) = cut_run(&first);

    ensure_archive(&unhashed(&url), tmp.path(), &opts(), &has_graph).unwrap();

    let seen = first.requests();
    assert_eq!(
        (seen[1].range.as_deref(), seen[1].status),
        (Some("bytes=100000-"), 206)
    );
    assert_eq!(fs::read(tmp.path().join(NAME)).unwrap(), good_tgz());
}

#[test]
fn last_modified_is_a_validator_too() {
    let date = "Wed, 21 Oct 2015 07:28:00 GMT".to_string();
    let validators = Validators {
        etag: None,
        last_modified: Some(date.clone()),
    };
    let server = Server::start_on(
        0,
        good_tgz(),
        vec![Step::Cut(100_000)],
        Step::Serve,
        validators,
    );
    let tmp = tempfile::tempdir().unwrap();

    ensure_archive(
        &unhashed(&server.url(NAME)),
        tmp.path(),
        &opts(),
        &has_graph,
    )
    .unwrap();

    let seen = server.requests();
    assert_eq!(seen[1].if_range.as_deref(), Some(date.as_str()));
    assert_eq!(seen[1].status, 206);
    assert_eq!(fs::read(tmp.path().join(NAME)).unwrap(), good_tgz());
}

#[test]
fn server_without_a_validator_is_never_resumed() {
    let server = Server::start_on(
        0,
        good_tgz(),
        vec![Step::Cut(100_000)],
        Step::Serve,
        Validators::none(),
    );
    let tmp = tempfile::tempdir().unwrap();

    ensure_archive(
        &unhashed(&server.url(NAME)),
        tmp.path(),
        &opts(),
        &has_graph,
    )
    .unwrap();

    let ranges: Vec<Option<String>> = server.requests().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [None, None], "the second try starts over");
    assert_eq!(fs::read(tmp.path().join(NAME)).unwrap(), good_tgz());
}

#[test]
fn part_without_a_record_is_discarded() {
    // What an older flowers left: a bare .part, from who knows where.
    let server = Server::start(good_tgz(), vec![], Step::Serve);
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join(format!("{NAME}.part")),
        &other_tgz()[..50_000],
    )
    .unwrap();

    ensure_archive(
        &unhashed(&server.url(NAME)),
        tmp.path(),
        &opts(),
        &has_graph,
    )
    .unwrap();

    assert_eq!(server.requests()[0].range, None);
    assert_eq!(fs::read(tmp.path().join(NAME)).unwrap(), good_tgz());
}

/// What an older flowers left after a captive portal: the page under the final name, no
/// marker. It is deleted (with a warning) and downloaded again.
#[test]
fn page_kept_by_an_older_flowers_is_replaced() {
    let server = Server::start(good_tgz(), vec![], Step::Serve);
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(NAME), b"<html>log in</html>").unwrap();

    ensure_archive(
        &unhashed(&server.url(NAME)),
        tmp.path(),
        &opts(),
        &has_graph,
    )
    .unwrap();

    assert_eq!(fs::read(tmp.path().join(NAME)).unwrap(), good_tgz());
    assert_eq!(server.requests().len(), 1);
}

/// An older flowers extracted a wrong archive and marked it (v1): without a sha256 to
/// vouch for it the v1 marker is not trusted, the check fails, and it is replaced.
#[test]
fn wrong_archive_marked_by_an_older_flowers_is_replaced() {
    let server = Server::start(good_tgz(), vec![], Step::Serve);
    let tmp = tempfile::tempdir().unwrap();
    let wrong = model_tgz("other_v1", 1000);
    fs::write(tmp.path().join(NAME), &wrong).unwrap();
    fs::create_dir(tmp.path().join("other_v1")).unwrap();
    let marker = format!(
        "flowers-extracted v1\nsize {}\nsha256 {}\nentry other_v1\n",
        wrong.len(),
        sha256_hex(&wrong)
    );
    fs::write(tmp.path().join(format!(".{NAME}.extracted")), marker).unwrap();

    ensure_archive(
        &unhashed(&server.url(NAME)),
        tmp.path(),
        &opts(),
        &has_graph,
    )
    .unwrap();

    assert_eq!(fs::read(tmp.path().join(NAME)).unwrap(), good_tgz());
    assert!(tmp.path().join("model_v1/graph.pb").is_file());
}

// ---------------------------------------------------------------------------
// The binary: `flowers extract --architecture` against a misbehaving mirror.

/// retrain.py's `mobilenet_0.50_224` has no published sha256 or size.
const ARCHITECTURE: &str = "mobilenet_0.50_224";
const ARCHIVE: &str = "mobilenet_v1_0.50_224_frozen.tgz";
const MEMBER: &str = "mobilenet_v1_0.50_224/frozen_graph.pb";

/// A stand-in for the 0.50 archive: the genuine 0.25 graph (same inputs, ops and
/// bottleneck name) under the 0.50 member's name, so the real check (load, one
/// bottleneck) passes.
fn stand_in_archive() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tf/mobilenet_v1_0.25_224_frozen.tgz");
    let file = fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("frozen_graph.pb") {
            let mut graph = Vec::new();
            entry.read_to_end(&mut graph).unwrap();
            let mut header = tar::Header::new_gnu();
            header.set_size(graph.len() as u64);
            header.set_mode(0o644);
            out.append_data(&mut header, MEMBER, graph.as_slice())
                .unwrap();
        }
    }
    out.into_inner().unwrap().finish().unwrap()
}

/// `flowers extract --architecture mobilenet_0.50_224` with the mirror in the
/// environment, as CI sets it.
fn extract(cwd: &Path, server: &Server, env: &[(&str, &str)]) -> common::hostile::Run {
    let base = server.url("mirror/");
    let mut env = env.to_vec();
    env.push(("FLOWERS_MODEL_BASE_URL", &base));
    let args = [
        "extract",
        "--image-dir",
        "images",
        "--bottleneck-dir",
        "cache",
        "--architecture",
        ARCHITECTURE,
        "--model-dir",
        "models",
        "--quiet",
    ];
    run_bounded(&args, cwd, &env, Duration::from_secs(60))
}

#[test]
fn binary_refuses_a_portal_and_an_endless_body_then_works_with_a_good_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_sample(&tmp.path().join("images"), &["daisy", "roses"], 1);
    let models = tmp.path().join("models");
    let images = snapshot(&tmp.path().join("images"));

    let portal = Server::start(Vec::new(), vec![], Step::Html);
    let run = extract(tmp.path(), &portal, &[]);
    assert_refused(&run, 2, &["web page", ARCHIVE], 150);
    assert_nothing_kept(&models);

    let endless = Server::start(Vec::new(), vec![], Step::Endless);
    let run = extract(
        tmp.path(),
        &endless,
        &[("FLOWERS_MAX_DOWNLOAD_SIZE", "2MiB")],
    );
    assert_refused(&run, 2, &["more than the limit of 2097152 bytes"], 150);
    assert_nothing_kept(&models);

    let wrong = Server::start(
        model_tgz("mobilenet_v1_0.50_224", 1000),
        vec![],
        Step::Serve,
    );
    let run = extract(tmp.path(), &wrong, &[]);
    assert_refused(&run, 2, &[&format!("it has no {MEMBER}")], 150);
    assert_nothing_kept(&models);

    let good = Server::start(stand_in_archive(), vec![], Step::Serve);
    let run = extract(tmp.path(), &good, &[]);
    common::hostile::assert_no_panic(&run);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(models.join(MEMBER).is_file());
    assert!(models.join(format!(".{ARCHIVE}.extracted")).is_file());
    assert_eq!(snapshot(&tmp.path().join("images")), images);
}
