//! Classification reports: accuracy, per-class precision/recall/F1, the confusion matrix
//! and the misclassified images, for the test split at the end of retrain and for
//! `flowers evaluate` on any class-per-folder directory.

use serde::Serialize;

/// An image the classifier got wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Misclassified {
    pub image: String,
    pub label: String,
    pub predicted: String,
}

/// Precision, recall and F1 of one class.
#[derive(Clone, Debug, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Number of images whose true label is this class.
    pub support: usize,
}

/// Everything a classification report shows.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub accuracy: f64,
    pub n: usize,
    /// Images of `n` the graph failed on (`inference_failed`, e.g. NaN scores), counted as
    /// wrong answers: a graph cannot score better by failing.
    pub failed: usize,
    pub classes: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`, in label order.
    pub confusion: Vec<Vec<usize>>,
    pub labels: Vec<String>,
    pub misclassified: Vec<Misclassified>,
}

impl Report {
    /// Builds the report from true and predicted class indices; `images` names each row.
    pub fn new(
        labels: &[String],
        truth: &[usize],
        predicted: &[usize],
        images: &[String],
    ) -> Report {
        let k = labels.len();
        let mut confusion = vec![vec![0usize; k]; k];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t][p] += 1;
        }
        let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
        let classes = (0..k)
            .map(|c| class_metrics(&labels[c], &confusion, c))
            .collect();
        let misclassified = truth
            .iter()
            .zip(predicted)
            .zip(images)
            .filter(|((t, p), _)| t != p)
            .map(|((&t, &p), image)| Misclassified {
                image: image.clone(),
                label: labels[t].clone(),
                predicted: labels[p].clone(),
            })
            .collect();
        Report {
            accuracy: correct as f64 / truth.len().max(1) as f64,
            n: truth.len(),
            failed: 0,
            classes,
            confusion,
            labels: labels.to_vec(),
            misclassified,
        }
    }
}

impl Report {
    /// The report with `failed` more images, which the graph could not classify, counted
    /// in `n` as wrong answers.
    pub fn with_failures(mut self, failed: usize) -> Report {
        let correct: usize = (0..self.labels.len()).map(|c| self.confusion[c][c]).sum();
        self.n += failed;
        self.failed += failed;
        self.accuracy = correct as f64 / self.n.max(1) as f64;
        self
    }
}

fn class_metrics(label: &str, confusion: &[Vec<usize>], c: usize) -> ClassMetrics {
    let true_positives = confusion[c][c] as f64;
    let predicted: usize = confusion.iter().map(|row| row[c]).sum();
    let support: usize = confusion[c].iter().sum();
    let ratio = |a: f64, b: usize| if b == 0 { 0.0 } else { a / b as f64 };
    let precision = ratio(true_positives, predicted);
    let recall = ratio(true_positives, support);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    ClassMetrics {
        label: label.to_string(),
        precision,
        recall,
        f1,
        support,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_a_hand_count() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let truth = [0, 0, 0, 1, 1, 2];
        let predicted = [0, 0, 1, 1, 2, 2];
        let names: Vec<String> = (0..6).map(|i| format!("img{i}")).collect();
        let report = Report::new(&labels, &truth, &predicted, &names);
        assert_eq!(
            report.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        assert!((report.accuracy - 4.0 / 6.0).abs() < 1e-12);
        let a = &report.classes[0];
        assert_eq!((a.precision, a.support), (1.0, 3));
        assert!((a.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((a.f1 - 0.8).abs() < 1e-12);
        assert_eq!(report.classes[1].precision, 0.5);
        assert_eq!(report.misclassified.len(), 2);
        assert_eq!(report.misclassified[0].image, "img2");
        assert_eq!(report.misclassified[0].predicted, "b");

        let mut text = Vec::new();
        crate::report::text::write_tables(&mut text, &report).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("a              1.000   0.667  0.800        3"),
            "{text}"
        );

        let failing = report.with_failures(2);
        assert_eq!((failing.n, failing.failed), (8, 2));
        assert!((failing.accuracy - 4.0 / 8.0).abs() < 1e-12);
        assert_eq!(failing.confusion[0], [2, 1, 0]);
    }
}
