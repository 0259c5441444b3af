"""Testing the paper's claims: baselines, student training, benchmarks, router-eval and the cost-reward frontier."""
