"""Train a few small models in a foreach and keep the best one.

    python foreach_training_flow.py run                # first time: every step runs
    python foreach_training_flow.py run                # again: every step hits the cache
    python foreach_training_flow.py run --epochs 300   # a parameter changed: all rerun

Edit CONFIGS (reorder it, add a config) and run again: the configs that were
already trained hit the cache, because foreach items are keyed by value, not by
position. Only new configs train, then the join picks the best again.
"""

import random

from metaflow import FlowSpec, Parameter, memoize, step

# Each config is one foreach task. Keep items plain data (dicts, lists, numbers,
# strings): the cache identifies an item by its pickled value.
CONFIGS = [
    {"name": "linear", "degree": 1, "lr": 0.2},
    {"name": "quadratic", "degree": 2, "lr": 0.2},
    {"name": "cubic", "degree": 3, "lr": 0.2},
    {"name": "cubic-slow", "degree": 3, "lr": 0.02},
]


def features(x, degree):
    """Polynomial features [1, x, x**2, ...]. A helper: editing it invalidates its users."""
    return [x**d for d in range(degree + 1)]


def mse(weights, points, degree):
    total = 0.0
    for x, y in points:
        prediction = sum(w * f for w, f in zip(weights, features(x, degree)))
        total += (prediction - y) ** 2
    return total / len(points)


class ForeachTrainingFlow(FlowSpec):
    epochs = Parameter("epochs", default=400, help="Gradient steps per model")
    seed = Parameter("seed", default=7, help="Seed of the synthetic data set")

    @memoize
    @step
    def start(self):
        rng = random.Random(self.seed)
        points = []
        for _ in range(120):
            x = rng.uniform(-1.0, 1.0)
            points.append((x, x**3 - 0.5 * x + rng.gauss(0.0, 0.05)))
        self.train_points, self.valid_points = points[:90], points[90:]
        self.configs = CONFIGS
        self.next(self.train, foreach="configs")

    @memoize
    @step
    def train(self):
        config = self.input
        degree, lr = config["degree"], config["lr"]
        weights = [0.0] * (degree + 1)
        n = len(self.train_points)
        for _ in range(self.epochs):
            grad = [0.0] * len(weights)
            for x, y in self.train_points:
                f = features(x, degree)
                error = sum(w * v for w, v in zip(weights, f)) - y
                for i, v in enumerate(f):
                    grad[i] += 2.0 * error * v / n
            weights = [w - lr * g for w, g in zip(weights, grad)]
        self.config = config
        self.weights = weights
        self.valid_mse = mse(weights, self.valid_points, degree)
        self.next(self.choose_best)

    @memoize
    @step
    def choose_best(self, inputs):
        # A join's key does not depend on the order its inputs arrive in.
        scores = sorted((i.valid_mse, i.config["name"]) for i in inputs)
        best = min(inputs, key=lambda i: i.valid_mse)
        self.scores = [(name, round(score, 5)) for score, name in scores]
        self.best_config = best.config
        self.best_weights = best.weights
        self.next(self.end)

    @step
    def end(self):
        for name, score in self.scores:
            print("%-12s validation MSE %.5f" % (name, score))
        print("best:", self.best_config["name"])


if __name__ == "__main__":
    ForeachTrainingFlow()
