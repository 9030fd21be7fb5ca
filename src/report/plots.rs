//! PNG pictures of a run: training curves and a confusion matrix.
//!
//! Plots are drawn with plotters into an in-memory RGB buffer, encoded with `image`, and
//! written atomically, so a reader never sees half a PNG. The font is embedded, so the
//! pictures look the same on every machine and need no system fonts.

use std::io::Cursor;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use super::metrics::Report;
use crate::util::atomic::write_atomically;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform};

/// One evaluation point of training.
///
/// Accuracies are fractions in 0..=1 (as `train::accuracy` returns them); the plot shows
/// them as percentages. Validation values are `None` at steps where validation did not run.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    pub step: usize,
    pub train_accuracy: f64,
    pub cross_entropy: f64,
    pub validation_accuracy: Option<f64>,
    pub validation_cross_entropy: Option<f64>,
}

const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FONT: &str = "sans-serif";
const CURVES_SIZE: (u32, u32) = (1200, 900);
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VALIDATION_COLOR: RGBColor = RGBColor(230, 85, 13);
const GRID_COLOR: RGBColor = RGBColor(200, 200, 200);
const SUBTITLE_COLOR: RGBColor = RGBColor(80, 80, 80);
/// The darkest shade of the confusion matrix (a full row in one cell).
const CELL_DARK: RGBColor = RGBColor(8, 48, 107);

/// Draws a report's confusion matrix as a PNG titled `what`, with the accuracy and N.
pub fn write_confusion_png(path: &Path, report: &Report, what: &str) -> Result<()> {
    let title = format!(
        "{what}: accuracy {:.1}% (N={})",
        report.accuracy * 100.0,
        report.n
    );
    write_confusion_matrix(path, &report.labels, &report.confusion, &title)
}

/// Writes a PNG with two panels: accuracy (train and validation, 0..100 %) against step,
/// and cross entropy (train and validation) against step.
///
/// Empty `points` is not an error: a run with no evaluation still gets a picture, which
/// says so, so that callers need no special case.
pub fn write_training_curves(path: &Path, points: &[CurvePoint]) -> Result<()> {
    render_png(path, CURVES_SIZE, |root| {
        if points.is_empty() {
            return draw_note(
                root,
                "No training curves: no evaluation points were recorded.",
            );
        }
        let (top, bottom) = root.split_vertically(CURVES_SIZE.1 / 2);
        draw_accuracy_panel(&top, points)?;
        draw_cross_entropy_panel(&bottom, points)
    })
    .map_err(|e| anyhow!("cannot write training curves to {}: {e:#}", path.display()))
}

/// Writes a PNG of a confusion matrix: rows are true labels, columns predicted labels;
/// each cell is shaded by its fraction of the row and shows its count.
///
/// `title` is drawn as given (callers put the overall accuracy in it); a subtitle adds N,
/// the sum of the matrix. The picture grows with the number of classes; long label names
/// are abbreviated, and column labels are rotated when they do not fit across a cell.
pub fn write_confusion_matrix(
    path: &Path,
    labels: &[String],
    matrix: &[Vec<usize>],
    title: &str,
) -> Result<()> {
    let result = check_matrix(labels, matrix).and_then(|()| {
        let layout = MatrixLayout::new(labels, matrix, title)?;
        render_png(path, layout.size, |root| {
            draw_matrix(root, &layout, labels, matrix, title)
        })
    });
    result.map_err(|e| anyhow!("cannot write confusion matrix to {}: {e:#}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Rendering and writing

/// Registers the embedded font with plotters, once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if !ok {
        bail!("the embedded font could not be loaded");
    }
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws into a white RGB buffer of `size`, then encodes it and writes it to `path`.
fn render_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    ensure_font()?;
    let (w, h) = size;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let image = image::RgbImage::from_raw(w, h, buf).context("image buffer has the wrong size")?;
    let mut png = Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png)?;
    write_atomically(path, png.get_ref())
}

fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).color(&BLACK)
}

/// Width and height of `text` in pixels at `size`.
fn text_size(text: &str, size: f64) -> Result<(i32, i32)> {
    let (w, h) = (FONT, size).into_font().box_size(text)?;
    Ok((w as i32, h as i32))
}

fn draw_text(area: &Area, text: &str, style: &TextStyle, at: (i32, i32)) -> Result<()> {
    area.draw(&Text::new(text.to_string(), at, style.clone()))?;
    Ok(())
}

fn draw_note(root: &Area, note: &str) -> Result<()> {
    let (w, h) = root.dim_in_pixel();
    let style = font(28.0).pos(Pos::new(HPos::Center, VPos::Center));
    draw_text(root, note, &style, (w as i32 / 2, h as i32 / 2))
}

// ---------------------------------------------------------------------------------------
// Training curves

/// One line of a panel: its legend name, colour and (step, value) points.
struct Series {
    name: &'static str,
    color: RGBColor,
    points: Vec<(i64, f64)>,
}

impl Series {
    /// Keeps the finite values only: a NaN loss must not break the whole picture.
    fn new(
        name: &'static str,
        color: RGBColor,
        points: impl Iterator<Item = (usize, Option<f64>)>,
    ) -> Self {
        let points = points
            .filter_map(|(step, v)| v.filter(|v| v.is_finite()).map(|v| (step as i64, v)))
            .collect();
        Series {
            name,
            color,
            points,
        }
    }
}

fn draw_accuracy_panel(area: &Area, points: &[CurvePoint]) -> Result<()> {
    let percent = |v: f64| v * 100.0;
    let train = points
        .iter()
        .map(|p| (p.step, Some(percent(p.train_accuracy))));
    let validation = points
        .iter()
        .map(|p| (p.step, p.validation_accuracy.map(percent)));
    let series = [
        Series::new("train", TRAIN_COLOR, train),
        Series::new("validation", VALIDATION_COLOR, validation),
    ];
    let panel = Panel {
        title: "Accuracy",
        y_desc: "accuracy (%)",
        y_range: 0.0..100.0,
        percent: true,
    };
    panel.draw(area, points, &series)
}

fn draw_cross_entropy_panel(area: &Area, points: &[CurvePoint]) -> Result<()> {
    let train = points.iter().map(|p| (p.step, Some(p.cross_entropy)));
    let validation = points.iter().map(|p| (p.step, p.validation_cross_entropy));
    let series = [
        Series::new("train", TRAIN_COLOR, train),
        Series::new("validation", VALIDATION_COLOR, validation),
    ];
    let max = series
        .iter()
        .flat_map(|s| &s.points)
        .map(|p| p.1)
        .fold(0.0, f64::max);
    let top = if max > 0.0 { max * 1.08 } else { 1.0 };
    let panel = Panel {
        title: "Cross entropy",
        y_desc: "cross entropy",
        y_range: 0.0..top,
        percent: false,
    };
    panel.draw(area, points, &series)
}

struct Panel {
    title: &'static str,
    y_desc: &'static str,
    y_range: Range<f64>,
    percent: bool,
}

impl Panel {
    /// Draws the title with the legend beside it (above the plot, so it never hides data),
    /// then the chart.
    fn draw(&self, area: &Area, points: &[CurvePoint], series: &[Series]) -> Result<()> {
        let area = area.margin(12, 8, 12, 30);
        let (header, body) = area.split_vertically(44);
        let (header_w, _) = header.dim_in_pixel();
        draw_text(
            &header,
            self.title,
            &font(26.0).pos(Pos::new(HPos::Left, VPos::Center)),
            (70, 20),
        )?;
        let shown: Vec<&Series> = series.iter().filter(|s| !s.points.is_empty()).collect();
        draw_legend(&header, &shown, header_w as i32)?;
        self.draw_chart(&body, points, &shown)
    }

    fn draw_chart(&self, area: &Area, points: &[CurvePoint], series: &[&Series]) -> Result<()> {
        let mut chart = ChartBuilder::on(area)
            .x_label_area_size(52)
            .y_label_area_size(74)
            .build_cartesian_2d(step_range(points), self.y_range.clone())?;
        let percent = self.percent;
        let y_format = move |v: &f64| {
            if percent {
                format!("{v:.0}%")
            } else {
                format!("{v:.2}")
            }
        };
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID_COLOR)
            .x_desc("training step")
            .y_desc(self.y_desc)
            .axis_desc_style(font(18.0))
            .label_style(font(16.0))
            .y_label_formatter(&y_format)
            .x_label_formatter(&|v: &i64| if *v < 0 { String::new() } else { v.to_string() })
            .draw()?;
        for s in series {
            draw_series(&mut chart, s)?;
        }
        Ok(())
    }
}

/// The steps' span; a single step sits in the middle rather than on the axis.
fn step_range(points: &[CurvePoint]) -> Range<i64> {
    let first = points.iter().map(|p| p.step).min().unwrap_or(0) as i64;
    let last = points.iter().map(|p| p.step).max().unwrap_or(0) as i64;
    if first == last {
        first - 1..last + 1
    } else {
        first..last
    }
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordi64, plotters::coord::types::RangedCoordf64>,
>;

/// A line, plus a dot at each point when there are few enough to tell apart.
fn draw_series(chart: &mut Chart, series: &Series) -> Result<()> {
    let style = series.color.stroke_width(2);
    chart.draw_series(LineSeries::new(series.points.iter().copied(), style))?;
    if series.points.len() <= 60 {
        let dots = series
            .points
            .iter()
            .map(|&p| Circle::new(p, 3, series.color.filled()));
        chart.draw_series(dots)?;
    }
    Ok(())
}

/// Draws "── train  ── validation", right-aligned in the header.
fn draw_legend(header: &Area, series: &[&Series], right: i32) -> Result<()> {
    const SWATCH: i32 = 34;
    const GAP: i32 = 28;
    let style = font(18.0).pos(Pos::new(HPos::Left, VPos::Center));
    let mut widths = Vec::new();
    for s in series {
        widths.push(text_size(s.name, 18.0)?.0);
    }
    let total: i32 = widths.iter().map(|w| SWATCH + 8 + w + GAP).sum();
    let (mut x, y) = (right - total, 20);
    for (s, w) in series.iter().zip(widths) {
        header.draw(&PathElement::new(
            vec![(x, y), (x + SWATCH, y)],
            s.color.stroke_width(3),
        ))?;
        header.draw(&Circle::new((x + SWATCH / 2, y), 4, s.color.filled()))?;
        draw_text(header, s.name, &style, (x + SWATCH + 8, y))?;
        x += SWATCH + 8 + w + GAP;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Confusion matrix

/// Longest label name shown in full; longer ones are abbreviated with an ellipsis.
const MAX_LABEL_CHARS: usize = 22;
const PAD: i32 = 24;

fn check_matrix(labels: &[String], matrix: &[Vec<usize>]) -> Result<()> {
    if labels.is_empty() {
        bail!("no labels");
    }
    if matrix.len() != labels.len() || matrix.iter().any(|row| row.len() != labels.len()) {
        bail!("the matrix is not {n}x{n} for {n} labels", n = labels.len());
    }
    Ok(())
}

/// "bird_of_paradise_strelitzia_reginae" → "bird_of_parad…a_reginae": a long name never
/// swamps the grid, and keeping both ends tells apart names that share a prefix.
fn abbreviate(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= MAX_LABEL_CHARS {
        return name.to_string();
    }
    let head = (MAX_LABEL_CHARS - 1) * 3 / 5;
    let tail = MAX_LABEL_CHARS - 1 - head;
    let (start, end) = (&chars[..head], &chars[chars.len() - tail..]);
    format!(
        "{}…{}",
        start.iter().collect::<String>(),
        end.iter().collect::<String>()
    )
}

/// Pixel geometry of the matrix picture, derived from the number of classes and the label
/// widths so that nothing is cut off.
struct MatrixLayout {
    size: (u32, u32),
    /// Top-left corner of the grid.
    origin: (i32, i32),
    cell: i32,
    label_font: f64,
    count_font: f64,
    rotate_columns: bool,
    /// Height of the column-label band below the grid.
    column_band: i32,
    /// Width of the row-label band left of the grid.
    row_band: i32,
}

impl MatrixLayout {
    const TITLE_FONT: f64 = 24.0;
    const SUBTITLE_FONT: f64 = 16.0;
    const AXIS_FONT: f64 = 18.0;

    fn new(labels: &[String], matrix: &[Vec<usize>], title: &str) -> Result<Self> {
        ensure_font()?;
        let n = labels.len() as i32;
        let cell = (720 / n).clamp(28, 130);
        let label_font = (cell as f64 * 0.4).clamp(13.0, 18.0);
        let count_font = (cell as f64 * 0.32).clamp(11.0, 26.0);
        let mut widest = 0;
        for label in labels {
            widest = widest.max(text_size(&abbreviate(label), label_font)?.0);
        }
        let rotate_columns = widest > cell - 8;
        let column_band = if rotate_columns {
            widest + 12
        } else {
            label_font as i32 + 14
        };
        let row_band = widest + 12;
        let left = PAD + Self::AXIS_FONT as i32 + 14 + row_band;
        let top = PAD + Self::TITLE_FONT as i32 + 12 + Self::SUBTITLE_FONT as i32 + 24;
        let grid = n * cell;
        let needed = left + grid + PAD + 12;
        let title_w = text_size(title, Self::TITLE_FONT)?.0;
        let subtitle_w = text_size(&subtitle(matrix, title), Self::SUBTITLE_FONT)?.0;
        let width = needed.max(title_w.max(subtitle_w) + 2 * PAD);
        let height = top + grid + column_band + Self::AXIS_FONT as i32 + 16 + PAD;
        let origin = (left + (width - needed) / 2, top);
        let size = (width as u32, height as u32);
        Ok(MatrixLayout {
            size,
            origin,
            cell,
            label_font,
            count_font,
            rotate_columns,
            column_band,
            row_band,
        })
    }
}

fn draw_matrix(
    root: &Area,
    layout: &MatrixLayout,
    labels: &[String],
    matrix: &[Vec<usize>],
    title: &str,
) -> Result<()> {
    draw_matrix_titles(root, layout, matrix, title)?;
    for (row, counts) in matrix.iter().enumerate() {
        let total: usize = counts.iter().sum();
        for (column, &count) in counts.iter().enumerate() {
            draw_cell(root, layout, (row, column), count, total)?;
        }
    }
    draw_matrix_labels(root, layout, labels)
}

fn draw_matrix_titles(
    root: &Area,
    layout: &MatrixLayout,
    matrix: &[Vec<usize>],
    title: &str,
) -> Result<()> {
    let width = layout.size.0 as i32;
    let centered = Pos::new(HPos::Center, VPos::Top);
    let title_style = font(MatrixLayout::TITLE_FONT).pos(centered);
    draw_text(root, title, &title_style, (width / 2, PAD))?;
    let subtitle = subtitle(matrix, title);
    let sub_style = font(MatrixLayout::SUBTITLE_FONT)
        .color(&SUBTITLE_COLOR)
        .pos(centered);
    let sub_y = PAD + MatrixLayout::TITLE_FONT as i32 + 12;
    draw_text(root, &subtitle, &sub_style, (width / 2, sub_y))
}

/// How to read the picture, and N unless the title already says it.
fn subtitle(matrix: &[Vec<usize>], title: &str) -> String {
    let n: usize = matrix.iter().flatten().sum();
    let legend = "rows: true label  ·  columns: predicted label  ·  shade: fraction of the row";
    let compact = title.replace(' ', "");
    if compact.contains(&format!("N={n}")) {
        legend.to_string()
    } else {
        format!("N = {n}  ·  {legend}")
    }
}

fn draw_cell(
    root: &Area,
    layout: &MatrixLayout,
    (row, column): (usize, usize),
    count: usize,
    row_total: usize,
) -> Result<()> {
    let (x0, y0) = layout.origin;
    let c = layout.cell;
    let (x, y) = (x0 + column as i32 * c, y0 + row as i32 * c);
    let fraction = if row_total == 0 {
        0.0
    } else {
        count as f64 / row_total as f64
    };
    root.draw(&Rectangle::new(
        [(x, y), (x + c, y + c)],
        shade(fraction).filled(),
    ))?;
    root.draw(&Rectangle::new(
        [(x, y), (x + c, y + c)],
        GRID_COLOR.stroke_width(1),
    ))?;
    let color = match (count, fraction > 0.5) {
        (0, _) => RGBColor(170, 170, 170),
        (_, true) => WHITE,
        (_, false) => BLACK,
    };
    let text = count.to_string();
    // Shrink long counts so they stay inside a small cell.
    let size = layout.count_font.min(c as f64 * 1.6 / text.len() as f64);
    let style = font(size)
        .color(&color)
        .pos(Pos::new(HPos::Center, VPos::Center));
    draw_text(root, &text, &style, (x + c / 2, y + c / 2))
}

/// White for 0, through light blue, to `CELL_DARK` for a whole row.
fn shade(fraction: f64) -> RGBColor {
    let f = fraction.clamp(0.0, 1.0).powf(0.6);
    let mix = |dark: u8| (255.0 - (255.0 - dark as f64) * f).round() as u8;
    RGBColor(mix(CELL_DARK.0), mix(CELL_DARK.1), mix(CELL_DARK.2))
}

fn draw_matrix_labels(root: &Area, layout: &MatrixLayout, labels: &[String]) -> Result<()> {
    let (x0, y0) = layout.origin;
    let c = layout.cell;
    let grid = labels.len() as i32 * c;
    let row_style = font(layout.label_font).pos(Pos::new(HPos::Right, VPos::Center));
    let column_style = if layout.rotate_columns {
        // Reads bottom to top, ending just below its column.
        font(layout.label_font)
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Right, VPos::Center))
    } else {
        font(layout.label_font).pos(Pos::new(HPos::Center, VPos::Top))
    };
    for (i, label) in labels.iter().enumerate() {
        let name = abbreviate(label);
        let middle = i as i32 * c + c / 2;
        draw_text(root, &name, &row_style, (x0 - 10, y0 + middle))?;
        draw_text(root, &name, &column_style, (x0 + middle, y0 + grid + 8))?;
    }
    let axis = font(MatrixLayout::AXIS_FONT);
    let below = y0 + grid + layout.column_band + 8;
    let predicted = axis.pos(Pos::new(HPos::Center, VPos::Top));
    draw_text(root, "Predicted label", &predicted, (x0 + grid / 2, below))?;
    let true_style = axis
        .transform(FontTransform::Rotate270)
        .pos(Pos::new(HPos::Center, VPos::Top));
    draw_text(
        root,
        "True label",
        &true_style,
        (
            x0 - layout.row_band - 14 - MatrixLayout::AXIS_FONT as i32,
            y0 + grid / 2,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn curve(n: usize, with_validation: bool) -> Vec<CurvePoint> {
        (0..n)
            .map(|i| {
                let t = i as f64 / n.max(2) as f64;
                let validation = with_validation && i % 2 == 0;
                CurvePoint {
                    step: i * 10,
                    train_accuracy: 0.2 + 0.75 * t.sqrt(),
                    cross_entropy: 1.6 * (-3.0 * t).exp() + 0.05,
                    validation_accuracy: validation.then_some(0.2 + 0.65 * t.sqrt()),
                    validation_cross_entropy: validation.then_some(1.6 * (-2.5 * t).exp() + 0.15),
                }
            })
            .collect()
    }

    fn flowers() -> Vec<String> {
        ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
            .map(String::from)
            .to_vec()
    }

    fn long_labels(n: usize) -> Vec<String> {
        let names = [
            "bird_of_paradise_strelitzia_reginae",
            "purple_coneflower",
            "globe_thistle",
            "lenten_rose",
            "king_protea",
            "pink_yellow_dahlia_cultivar",
            "sweet_william",
            "californian_poppy",
            "japanese_anemone",
            "bishop_of_llandaff",
            "moon_orchid",
            "mexican_aster",
        ];
        (0..n)
            .map(|i| names[i % names.len()].to_string() + &"_x".repeat(i / names.len()))
            .collect()
    }

    /// A mostly diagonal matrix with some confusion and an empty row.
    fn matrix(n: usize) -> Vec<Vec<usize>> {
        (0..n)
            .map(|r| {
                (0..n)
                    .map(|c| match (r, c) {
                        (1, _) if n > 4 => 0,
                        _ if r == c => 40 + 7 * r,
                        _ if (r + 1) % n == c => 3 + r % 5,
                        _ if (r + 3) % n == c => 1,
                        _ => 0,
                    })
                    .collect()
            })
            .collect()
    }

    fn title(m: &[Vec<usize>]) -> String {
        let n: usize = m.iter().flatten().sum();
        let right: usize = (0..m.len()).map(|i| m[i][i]).sum();
        format!(
            "Test set: accuracy {:.1}% (N={n})",
            100.0 * right as f64 / n as f64
        )
    }

    /// Reloads the PNG and checks it is a real picture, not a blank canvas.
    fn check_png(path: &Path, expected: Option<(u32, u32)>) -> (u32, u32) {
        let image = image::open(path).unwrap().to_rgb8();
        if let Some(size) = expected {
            assert_eq!(image.dimensions(), size);
        }
        let colours: HashSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
        assert!(
            colours.len() >= 8,
            "{} looks blank: {} colours",
            path.display(),
            colours.len()
        );
        image.dimensions()
    }

    fn write_all(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut written = Vec::new();
        let mut out = |name: &str| {
            written.push(dir.join(name));
            dir.join(name)
        };
        write_training_curves(&out("curves.png"), &curve(40, true)).unwrap();
        write_training_curves(&out("curves_train_only.png"), &curve(400, false)).unwrap();
        write_training_curves(&out("curves_one_point.png"), &curve(1, true)).unwrap();
        write_training_curves(&out("curves_empty.png"), &[]).unwrap();
        for (name, labels) in [
            ("matrix_5.png", flowers()),
            ("matrix_2.png", flowers()[..2].to_vec()),
            ("matrix_12.png", long_labels(12)),
            ("matrix_50.png", long_labels(50)),
        ] {
            let m = matrix(labels.len());
            write_confusion_matrix(&out(name), &labels, &m, &title(&m)).unwrap();
        }
        written
    }

    #[test]
    fn plots_are_written_and_not_blank() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(dir.path());
        for path in &written {
            let name = path.file_name().unwrap().to_str().unwrap();
            let expected = name.starts_with("curves").then_some(CURVES_SIZE);
            let (w, h) = check_png(path, expected);
            assert!(w >= 300 && h >= 300, "{name} is {w}x{h}");
        }
        let small = check_png(&dir.path().join("matrix_5.png"), None);
        let large = check_png(&dir.path().join("matrix_50.png"), None);
        assert!(
            large.0 > small.0 && large.1 > small.1,
            "size must grow with the classes"
        );
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, written.len(), "no temporary files left behind");
    }

    #[test]
    fn bad_input_and_paths_give_one_line_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("m.png");
        let error = write_confusion_matrix(&path, &flowers(), &matrix(5), "t").unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.starts_with("cannot write confusion matrix to "),
            "{message}"
        );
        assert!(
            message.contains("m.png") && !message.contains('\n'),
            "{message}"
        );
        let error = write_confusion_matrix(&dir.path().join("x.png"), &flowers(), &matrix(4), "t");
        assert!(format!("{:#}", error.unwrap_err()).contains("not 5x5"));
        let error = write_training_curves(&path, &curve(3, false)).unwrap_err();
        assert!(format!("{error:#}").starts_with("cannot write training curves to "));
    }

    #[test]
    fn long_names_are_abbreviated() {
        assert_eq!(abbreviate("roses"), "roses");
        let short = abbreviate("bird_of_paradise_strelitzia_reginae");
        assert_eq!(short.chars().count(), MAX_LABEL_CHARS);
        assert!(
            short.starts_with("bird_of_") && short.ends_with("_reginae"),
            "{short}"
        );
        assert!(short.contains('…'));
    }

    #[test]
    fn subtitle_adds_n_only_when_the_title_lacks_it() {
        let m = matrix(5);
        assert!(subtitle(&m, "Test set").starts_with("N = 248"));
        assert!(subtitle(&m, "accuracy 89.9% (N = 248)").starts_with("rows:"));
    }

    /// Writes the pictures to /tmp/plots for a person to look at:
    /// `cargo test --release --lib plots -- --ignored`.
    #[test]
    #[ignore]
    fn write_samples_for_viewing() {
        let dir = Path::new("/tmp/plots");
        std::fs::create_dir_all(dir).unwrap();
        for path in write_all(dir) {
            println!("{}", path.display());
        }
    }
}
