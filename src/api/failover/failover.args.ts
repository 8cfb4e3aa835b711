import { ArgsType, Field, Int } from "type-graphql";
import { Max, Min } from "class-validator";

@ArgsType()
export class FailoversArgs {
  @Field(() => Int, { defaultValue: 20, description: "How many, 1 to 200." })
  @Min(1)
  @Max(200)
  limit!: number;
}
