"""What a run hands on: the dataset and its side files, trainer formats with a dataset card, report.html."""
