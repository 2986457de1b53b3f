"""The paper's teleport-for-GD protocol on the reference task (20 unseen seeds, float64):
GD at lr 3e-4, and GD at lr 1e-4 with and without one gradient-ascent teleport at step 5
(8 ascent steps at 1e-7). Prints median losses; `python experiments/gd_teleport.py`."""
import torch

from metatele import BaselineConfig, TaskConfig, TeleportSchedule, run_baseline, sample_tasks, unseen_seeds

tasks = sample_tasks(TaskConfig(), unseen_seeds(20), dtype=torch.float64)
runs = {
    "GD lr 3e-4": BaselineConfig("gd", lr=3e-4),
    "GD lr 1e-4": BaselineConfig("gd", lr=1e-4),
    "GD lr 1e-4 + teleport@5": BaselineConfig("gd", lr=1e-4, teleport=TeleportSchedule(steps=[5])),
}
curves = {name: run_baseline(cfg, tasks.X, tasks.Y, tasks.weights, 300) for name, cfg in runs.items()}
steps = [0, 5, 10, 30, 100, 300]
print("median loss at steps " + " / ".join(map(str, steps)))
for name, c in curves.items():
    print(f"{name:24s} " + " / ".join(f"{c[s].median():.3g}" for s in steps))
wins = int((curves["GD lr 1e-4 + teleport@5"][300] < curves["GD lr 1e-4"][300]).sum())
print(f"teleport lower at step 300 on {wins}/20 seeds")
