//! A small generated world, its pretraining corpus and four task sets in the commonsense-170k
//! format, so the whole method can be shown without downloading anything.
//!
//! The world has a size order of animals, the colours of fruits, the tool each chore needs,
//! and things that do or do not fit in containers. The corpus states these facts in plain
//! sentences; the tasks ask about them in the four answer formats of BoolQ (`true/false`),
//! PIQA (`solution1/2`), ARC (`answer1..4`) and WinoGrande (`option1/2`), with the
//! instructions worded as in LLM-Adapters' data. A base model pretrained on the corpus knows
//! the facts but not the task format; fine-tuning teaches the format.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::data::instruction::InstructionExample;
use crate::eval::commonsense::Task;

/// Animals from smallest to largest.
const ANIMALS: [&str; 10] = [
    "ant", "mouse", "cat", "dog", "sheep", "horse", "cow", "bear", "elephant", "whale",
];
/// Fruits and their colours.
const FRUITS: [(&str, &str); 10] = [
    ("banana", "yellow"),
    ("lemon", "yellow"),
    ("apple", "red"),
    ("cherry", "red"),
    ("lime", "green"),
    ("pear", "green"),
    ("grape", "purple"),
    ("plum", "purple"),
    ("blueberry", "blue"),
    ("coconut", "brown"),
];
const COLOURS: [&str; 6] = ["yellow", "red", "green", "purple", "blue", "brown"];
/// Chores: verb, object, the tool that does it.
const CHORES: [(&str, &str, &str); 10] = [
    ("cut", "bread", "knife"),
    ("write", "letter", "pen"),
    ("dig", "hole", "shovel"),
    ("sweep", "floor", "broom"),
    ("paint", "wall", "brush"),
    ("open", "door", "key"),
    ("drink", "water", "cup"),
    ("fix", "chair", "hammer"),
    ("wash", "plate", "sponge"),
    ("light", "candle", "match"),
];
/// Things and containers.
const THINGS: [&str; 6] = ["ball", "book", "shoe", "lamp", "clock", "pillow"];
const CONTAINERS: [&str; 6] = ["box", "bag", "drawer", "basket", "suitcase", "bucket"];

/// The four task types of the generated set.
pub const TASKS: [Task; 4] = [Task::BoolQ, Task::Piqa, Task::ArcEasy, Task::WinoGrande];

fn example(instruction: String, answer: &str) -> InstructionExample {
    InstructionExample {
        instruction,
        input: String::new(),
        output: format!("the correct answer is {answer}"),
        answer: answer.to_string(),
    }
}

/// Seeds the option orders and wordings of the world's questions: they are part of the
/// world, the same whatever the data seed (which only splits and shuffles them).
const QUESTION_SEED: u64 = 0x1BA;

/// Every distinct question of `task`, in a fixed order.
fn all_questions(task: Task) -> Vec<InstructionExample> {
    let rng = &mut StdRng::seed_from_u64(QUESTION_SEED + task as u64);
    let mut out = Vec::new();
    match task {
        Task::BoolQ => {
            for (i, a) in ANIMALS.iter().enumerate() {
                for (j, b) in ANIMALS.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    let (relation, truth) = if rng.random_bool(0.5) {
                        ("bigger", i > j)
                    } else {
                        ("smaller", i < j)
                    };
                    out.push(example(
                        format!(
                            "Please answer the following question with true or false, question: is the {a} {relation} than the {b}?\n\nAnswer format: true/false"
                        ),
                        if truth { "true" } else { "false" },
                    ));
                }
            }
        }
        Task::Piqa => {
            for (i, (verb, object, tool)) in CHORES.iter().enumerate() {
                for (j, (_, _, other)) in CHORES.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    let first = rng.random_bool(0.5);
                    let (s1, s2) = if first { (tool, other) } else { (other, tool) };
                    out.push(example(
                        format!(
                            "Please choose the correct solution to the question: how do you {verb} the {object}?\n\nSolution1: use a {s1}.\n\nSolution2: use a {s2}.\n\nAnswer format: solution1/solution2"
                        ),
                        if first { "solution1" } else { "solution2" },
                    ));
                }
            }
        }
        Task::ArcEasy => {
            for (fruit, colour) in FRUITS {
                for _ in 0..8 {
                    let mut options: Vec<&str> =
                        COLOURS.iter().copied().filter(|c| *c != colour).collect();
                    options.shuffle(rng);
                    options.truncate(3);
                    let at = rng.random_range(0..4);
                    options.insert(at, colour);
                    out.push(example(
                        format!(
                            "Please choose the correct answer to the question: what colour is the {fruit}?\n\nAnswer1: {}\n\nAnswer2: {}\n\nAnswer3: {}\n\nAnswer4: {}\n\nAnswer format: answer1/answer2/answer3/answer4",
                            options[0], options[1], options[2], options[3]
                        ),
                        ["answer1", "answer2", "answer3", "answer4"][at],
                    ));
                }
            }
        }
        Task::WinoGrande => {
            for thing in THINGS {
                for container in CONTAINERS {
                    for (size, thing_is_answer) in [("big", true), ("small", false)] {
                        let thing_first = rng.random_bool(0.5);
                        let (o1, o2) = if thing_first {
                            (thing, container)
                        } else {
                            (container, thing)
                        };
                        let answer = if thing_is_answer == thing_first {
                            "option1"
                        } else {
                            "option2"
                        };
                        out.push(example(
                            format!(
                                "Please choose the correct answer to fill in the blank to complete the given sentence: the {thing} did not fit in the {container} because the _ was too {size}.\n\nOption1: {o1}\n\nOption2: {o2}\n\nAnswer format: option1/option2"
                            ),
                            answer,
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    out
}

/// A generated task set: `(train, test)` with `train_per_task` and `test_per_task` examples
/// of each of [`TASKS`], drawn without overlap from the distinct questions.
pub fn task_set(
    train_per_task: usize,
    test_per_task: usize,
    seed: u64,
) -> (
    Vec<InstructionExample>,
    Vec<(Task, Vec<InstructionExample>)>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for task in TASKS {
        let mut all = all_questions(task);
        all.shuffle(&mut rng);
        let test_n = test_per_task.min(all.len() / 2);
        let rest = all.split_off(test_n);
        test.push((task, all));
        // Questions repeat when more training examples are asked for than exist.
        train.extend(rest.iter().cycle().take(train_per_task).cloned());
    }
    train.shuffle(&mut rng);
    (train, test)
}

/// Plain sentences stating every fact of the world, in several wordings, shuffled.
pub fn pretraining_corpus(seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = Vec::new();
    for (i, a) in ANIMALS.iter().enumerate() {
        for (j, b) in ANIMALS.iter().enumerate() {
            if i > j {
                s.push(format!("the {a} is bigger than the {b} ."));
                s.push(format!("a {b} is smaller than a {a} ."));
                s.push(format!(
                    "question : is the {a} bigger than the {b} ? yes , it is ."
                ));
                s.push(format!(
                    "question : is the {b} bigger than the {a} ? no , it is not ."
                ));
                s.push(format!("is the {a} bigger than the {b} ? true ."));
                s.push(format!("is the {b} bigger than the {a} ? false ."));
                s.push(format!("is the {b} smaller than the {a} ? true ."));
                s.push(format!("is the {a} smaller than the {b} ? false ."));
            }
        }
    }
    for (fruit, colour) in FRUITS {
        s.push(format!("the {fruit} is {colour} ."));
        s.push(format!("a ripe {fruit} has a {colour} colour ."));
        s.push(format!(
            "question : what colour is the {fruit} ? it is {colour} ."
        ));
    }
    for (verb, object, tool) in CHORES {
        s.push(format!("to {verb} the {object} , use a {tool} ."));
        s.push(format!("you {verb} the {object} with a {tool} ."));
        s.push(format!(
            "question : how do you {verb} the {object} ? with a {tool} ."
        ));
    }
    for thing in THINGS {
        for container in CONTAINERS {
            s.push(format!(
                "the {thing} did not fit in the {container} because the {thing} was too big ."
            ));
            s.push(format!(
                "the {thing} did not fit in the {container} because the {container} was too small ."
            ));
        }
    }
    // The answer words of the task formats, in sentences of their own.
    for _ in 0..5 {
        s.push("the first solution is solution1 and the second solution is solution2 .".into());
        s.push("answer1 is the first answer , answer2 the second , answer3 the third and answer4 the fourth .".into());
        s.push("option1 is the first option and option2 is the second option .".into());
        s.push("a statement is true or false .".into());
    }
    s.push("below is an instruction that describes a task . write a response that appropriately completes the request .".into());
    s.push("please answer the following question . please choose the correct solution . the correct answer is the right one .".into());
    s.push("fill in the blank to complete the given sentence . choose the correct answer to the question .".into());
    s.shuffle(&mut rng);
    s
}
