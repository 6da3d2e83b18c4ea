-- sweep_lambda.lua: the adversarial weight λ against the curriculum's gate
-- region (the adversarial term applies only when mean(t)/(T-1) <= gate_region)
-- for experiments/quickstart.lua. Run from the repository root:
--
--   advdiff sweep experiments/sweep_lambda.lua              -- locally, 2 runs at a time
--   advdiff sweep experiments/sweep_lambda.lua --slurm      -- as a Slurm job array
--   advdiff sweep experiments/sweep_lambda.lua --set steps=200   -- shorter runs
--
-- Each run is `advdiff experiments/quickstart.lua --set lambda_adv=.. --set
-- gate_region=.. --set seed=.. --set cache=runs/sweeps/lambda/stages --set
-- out=runs/sweeps/lambda/<run-id>` and writes results.json there. The
-- pretraining stages (ADM, ResNet18, feature network) do not depend on λ or
-- the gate, so the runs share them through the stage cache: the first run
-- computes each one into runs/sweeps/lambda/stages/ (the others wait for it
-- rather than compute it too) and every later run, of this sweep or the next,
-- loads it. runs/sweeps/lambda/results.md ranks them by
-- recall (diversity kept), and tradeoff.png shows sharpness against recall
-- and FID with the Pareto front. The paper's setting is λ = 0.002 with the
-- gate at 0.5.
return {
  script = "experiments/quickstart.lua",
  grid = {
    lambda_adv = { 0, 0.0005, 0.001, 0.002, 0.004 },
    gate_region = { 0.25, 0.5, 1.0 },
  },
  set = { seed = 0, cache = "runs/sweeps/lambda/stages" },
  parallel = 2,
  metric = "recall",
  out = "runs/sweeps/lambda",
  plot = { sharpness = "sharpness", recall = "recall", fid = "fid" },
}
