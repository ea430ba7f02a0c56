-- Which clusters produce false alarms, according to analysts' feedback.
SELECT cluster_id, n_reviewed, n_true_positive, n_false_positive, precision
FROM precision_by_cluster
ORDER BY precision, n_reviewed DESC, cluster_id;
